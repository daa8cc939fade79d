"""Guest-side marker API for insn_plugin.c (qemu TCG plugin).

    from insn_markers import Markers
    m = Markers()           # resolves libc syscall() once (ctypes)
    m.start(tag); ...; m.stop(tag)

A marker is syscall(MARK_NR, 1|2, tag) with an unused syscall number: the
plugin sees it before qemu executes it; qemu (or a real kernel, if run on a
board without the plugin) then returns -1/ENOSYS, which is ignored here.
"""

import ctypes

MARK_NR = 0x4C454E  # must match insn_plugin.c / plugin arg mark_nr
START, STOP = 1, 2


class Markers:
    def __init__(self, nr: int = MARK_NR):
        f = ctypes.CDLL(None, use_errno=False).syscall
        f.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_long]
        f.restype = ctypes.c_long
        self._f = f
        self._nr = nr

    def start(self, tag: int = 0) -> None:
        self._f(self._nr, START, tag)

    def stop(self, tag: int = 0) -> None:
        self._f(self._nr, STOP, tag)
