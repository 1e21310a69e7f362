"""Worker processes of vaekit.parallel: they do not outlive an owner that was killed outright."""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

OWNER = """
    import os, sys, time
    from vaekit.parallel import map_shards

    def linger(folder, shard, progress=None):
        open(os.path.join(folder, f"{os.getpid()}.pid"), "w").close()
        time.sleep(120)  # a long batch

    if __name__ == "__main__":
        map_shards(linger, sys.argv[1], [(0,), (1,)], workers=2)
"""


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has stopped; only its parent has yet to reap it


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_workers_exit_soon_after_their_owner_is_killed(tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(OWNER))
    owner = subprocess.Popen([sys.executable, str(script), str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while len(pids := [int(p.stem) for p in tmp_path.glob("*.pid")]) < 2:
            assert owner.poll() is None and time.monotonic() < deadline, "the workers never started"
            time.sleep(0.05)
        assert all(running(pid) for pid in pids)
        owner.send_signal(signal.SIGKILL)  # no pool shutdown: only the workers themselves can notice
        owner.wait()
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(running(pid) for pid in pids), "workers outlived their owner by 10 s"
    finally:
        owner.kill()
