"""The CUDA code compiled into a binary: real machine code (ELF) for every architecture of
CMAKE_CUDA_ARCHITECTURES and PTX for the newest, read with cuobjdump --list-elf / --list-ptx.
Usage: check_architectures.py BINARY "80-real;90-real;90-virtual" """

import importlib.util
import os
import re
import shutil
import subprocess
import sys


def find_cuobjdump():
    for p in (shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump"):
        if p and os.path.exists(p):
            return p
    spec = importlib.util.find_spec("nvidia")  # the nvidia-cuda-cuobjdump wheel (tools/install-deps.sh)
    for root in (spec.submodule_search_locations if spec else []):
        p = os.path.join(root, "cu13", "bin", "cuobjdump")
        if os.path.exists(p):
            return p
    return None


def main():
    binary, archs = sys.argv[1], sys.argv[2]
    tool = find_cuobjdump()
    if tool is None:
        sys.exit("cuobjdump not found: run tools/install-deps.sh (it installs nvidia-cuda-cuobjdump)")
    want_elf, want_ptx = set(), set()
    for a in archs.split(";"):
        m = re.fullmatch(r"(\d+)(?:-(real|virtual))?", a.strip())
        if not m:
            sys.exit(f"unexpected architecture entry {a!r}")
        if m.group(2) in (None, "real"):
            want_elf.add(m.group(1))
        if m.group(2) in (None, "virtual"):
            want_ptx.add(m.group(1))
    elf = subprocess.run([tool, "--list-elf", binary], capture_output=True, text=True, check=True).stdout
    ptx = subprocess.run([tool, "--list-ptx", binary], capture_output=True, text=True, check=True).stdout
    have_elf = set(re.findall(r"\.sm_(\d+)[a-z]?\.cubin", elf))
    have_ptx = set(re.findall(r"\.sm_(\d+)[a-z]?\.ptx", ptx))
    print(f"ELF: sm_{', sm_'.join(sorted(have_elf))}; PTX: {', '.join(sorted(have_ptx))}")
    ok = True
    for a in sorted(want_elf - have_elf):
        print(f"missing machine code for sm_{a}")
        ok = False
    for a in sorted(want_ptx - have_ptx):
        print(f"missing PTX for compute_{a}")
        ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
