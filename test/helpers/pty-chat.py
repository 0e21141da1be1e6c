"""Drives `flashlm chat` in a pseudo-terminal, as a person at a keyboard:
types a line and presses Ctrl-C at once (the answer is cancelled), types
another line and lets it answer, presses Ctrl-C at the prompt (a hint
only), then Ctrl-D. Prints everything the terminal showed, then
`EXIT <code>`. argv: the command to run."""
import os
import pty
import select
import sys
import time

pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])

out = b""


def read_until(pred, timeout):
    global out
    end = time.time() + timeout
    while time.time() < end and not pred():
        r, _, _ = select.select([fd], [], [], 0.01)
        if r:
            try:
                out += os.read(fd, 4096)
            except OSError:
                return


def prompts():
    return out.count(b"> ")


read_until(lambda: prompts() >= 1, 20)
os.write(fd, b"Once upon a time\r\x03")
read_until(lambda: b"[stopped" in out and prompts() >= 2, 20)
os.write(fd, b"Hello\r")
read_until(lambda: out.count(b"[prompt") >= 1 and prompts() >= 3, 20)
os.write(fd, b"\x03")
read_until(lambda: b"Ctrl-D quits)" in out, 5)
os.write(fd, b"\x04")
read_until(lambda: False, 1.5)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.stdout.write("\nEXIT %d\n" % os.waitstatus_to_exitcode(status))
