"""npcnn.allocator: glibc's malloc keeps freed memory for the next step unless the user says otherwise."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A 256 MiB array made, touched and freed; prints the allocator's status and how much of it the
# process still holds (resident MiB after the free minus before the allocation).
PROBE = """
import numpy as np, npcnn
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
before = rss_mib()
a = np.ones(64 << 20, dtype=np.float32)
del a
print(npcnn.allocator.status)
print(rss_mib() - before)
"""


def _probe(**env):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "NPCNN_TUNE"))}
    full.update(env)
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=full, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    status, kept = done.stdout.strip().splitlines()[-2:]
    return status, float(kept)


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")


def test_freed_memory_stays_with_the_process_once_npcnn_is_imported():
    status, kept = _probe()
    assert status == "tuned"
    assert kept > 200                         # the 256 MiB block went back to the heap, not to the kernel


@pytest.mark.parametrize("env", [{"NPCNN_TUNE_MALLOC": "0"}, {"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_the_users_choice_leaves_malloc_alone(env):
    status, kept = _probe(**env)
    assert status.startswith("left alone: ") and next(iter(env)) in status
    assert kept < 50                          # glibc's default: a block that large is unmapped when freed


def test_tune_malloc_reads_the_environment_it_is_given():
    from npcnn import allocator
    assert allocator.tune_malloc({"NPCNN_TUNE_MALLOC": "0"}) == "left alone: NPCNN_TUNE_MALLOC=0"
    assert allocator.tune_malloc({"MALLOC_TOP_PAD_": "0"}) == "left alone: the user set MALLOC_TOP_PAD_"
    assert allocator.tune_malloc({}) == "tuned"
