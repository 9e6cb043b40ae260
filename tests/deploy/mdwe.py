"""Run Python code under systemd's MemoryDenyWriteExecute=yes, without systemd.

systemd 252 implements the directive as a seccomp filter (seccomp_memory_deny_write_execute):
mmap() asking for PROT_WRITE|PROT_EXEC, mprotect()/pkey_mprotect() asking for PROT_EXEC and
shmat() asking for SHM_EXEC fail with EPERM. This installs the same filter, then runs the
rest of the command line like `python`: `python mdwe.py -m agent.cli run ...` or `-c CODE`.
"""

from __future__ import annotations

import ctypes
import platform
import runpy
import sys

AUDIT_ARCH_X86_64 = 0xC000003E
NR = {"mmap": 9, "mprotect": 10, "pkey_mprotect": 329, "shmat": 30}
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
RET_ALLOW, RET_EPERM = 0x7FFF0000, 0x00050000 | 1
LD_ABS, JEQ, AND, RET = 0x20, 0x15, 0x54, 0x06
OFF_NR, OFF_ARCH, OFF_ARG2 = 0, 4, 16 + 8 * 2  # struct seccomp_data; little-endian low word of args[2]


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def _deny_if(mask: int) -> list[tuple[int, int, int, int]]:
    """EPERM when args[2] has every bit of `mask`, else allow."""
    return [(LD_ABS, 0, 0, OFF_ARG2), (AND, 0, 0, mask), (JEQ, 0, 1, mask), (RET, 0, 0, RET_EPERM), (RET, 0, 0, RET_ALLOW)]


def program() -> list[tuple[int, int, int, int]]:
    """The BPF program (jump offsets count the instructions after the jump)."""
    mmap, prot, shm = _deny_if(PROT_WRITE | PROT_EXEC), _deny_if(PROT_EXEC), _deny_if(SHM_EXEC)
    head = [(LD_ABS, 0, 0, OFF_ARCH), (JEQ, 1, 0, AUDIT_ARCH_X86_64), (RET, 0, 0, RET_ALLOW), (LD_ABS, 0, 0, OFF_NR)]
    dispatch = [  # 4 compares then allow; the blocks follow in the order mmap, prot, shm
        (JEQ, 4, 0, NR["mmap"]),
        (JEQ, 3 + len(mmap), 0, NR["mprotect"]),
        (JEQ, 2 + len(mmap), 0, NR["pkey_mprotect"]),
        (JEQ, 1 + len(mmap) + len(prot), 0, NR["shmat"]),
        (RET, 0, 0, RET_ALLOW),
    ]
    return head + dispatch + mmap + prot + shm


def install() -> None:
    if platform.machine() != "x86_64":
        raise SystemExit("mdwe.py: the filter is written for x86_64")
    insns = program()
    arr = (SockFilter * len(insns))(*(SockFilter(*i) for i in insns))
    prog = SockFprog(len(insns), arr)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, as NoNewPrivileges=yes
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


if __name__ == "__main__":
    install()
    if len(sys.argv) >= 3 and sys.argv[1] == "-m":
        sys.argv = sys.argv[2:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    elif len(sys.argv) >= 3 and sys.argv[1] == "-c":
        code, sys.argv = sys.argv[2], ["-c", *sys.argv[3:]]
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})
    else:
        raise SystemExit("usage: mdwe.py -m MODULE [ARGS] | -c CODE")
