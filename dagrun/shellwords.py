"""Does `sh -c COMMAND` add anything to COMMAND? The words of a plain command line, the way
GNU make decides to exec a recipe line itself instead of handing it to /bin/sh (job.c,
construct_command_argv_internal): a line without any of the shell's special characters whose
first word is not a shell keyword or a builtin without a file of its own is split on blanks
and exec'd directly. Pure: no file system, no environment (the runner does the PATH lookup,
and falls back to `sh -c` whenever the command is not an executable file there).

Stricter than make wherever the shell could do something: besides make's characters
(#;"*?[]&|<>(){}$`^~!) a backslash, a double quote, a newline, any control or non-ASCII
character, a `=` in the first word (an assignment) and a first word that dash runs itself
(a keyword, a special builtin, a builtin with no binary, or one whose binary behaves
differently: echo, printf, test, kill, pwd) all keep the shell. Only single quotes are
understood: in POSIX sh everything between two of them is literal (2.2.2), which is all
shlex.quote() writes -- so the preset adapter's `exec python -I -m dagrun.agentrun ...` line
splits too. A leading `exec` (dash's exec takes no options) is dropped: the shell would exec
the rest in its own place, which is what running it directly does."""
from __future__ import annotations

# characters that may stand unquoted in a word the shell passes through unchanged
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-./,:+@%=")
_BLANK = " \t"
# the first words that keep the shell: POSIX reserved words (2.4) and special builtins (2.14),
# GNU make's list for a Unix shell, dash's builtins without a binary, and those whose binary
# differs from the builtin (echo's backslashes, printf's escapes, kill's %jobs, pwd's -L/-P,
# test); bash words for good measure. `true`/`false` run as the binary, as in make: when
# there is no /usr/bin/true on PATH the lookup fails and the shell runs its builtin.
SHELL_FIRST = frozenset(
    # reserved words
    "! { } case do done elif else esac fi for if in then until while [[ ]] function select time "
    # special builtins
    "break : continue . eval exec exit export readonly return set shift times trap unset "
    # GNU make's sh_cmds (Unix) not named above
    "alias bg cd command fc fg getopts hash jobs login logout read test type ulimit umask unalias wait "
    # dash builtins: no binary, or a binary that behaves differently
    "chdir local echo printf kill pwd [ "
    # bash and others
    "builtin declare typeset let source shopt enable disown suspend coproc mapfile readarray "
    "compgen complete compopt dirs popd pushd history logout caller".split())


def plain_argv(command: str) -> list[str] | None:
    """The argv `sh -c command` would exec, when the shell would do nothing else (no
    expansion, redirection, list, assignment or builtin); None when in doubt."""
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    i, n = 0, len(command)
    while i < n:
        c = command[i]
        if c in _BLANK:
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
            i += 1
        elif c == "'":
            j = command.find("'", i + 1)
            if j < 0:
                return None                      # unterminated: the shell's error
            seg = command[i + 1:j]
            if any(not (" " <= ch <= "~") for ch in seg):
                return None                      # control / non-ASCII inside the quotes
            cur.append(seg)
            in_word = True
            i = j + 1
        elif c in _PLAIN:
            cur.append(c)
            in_word = True
            i += 1
        else:
            return None
    if in_word:
        words.append("".join(cur))
    if words and words[0] == "exec":
        words = words[1:]
        if words and words[0].startswith("-"):
            return None
    if not words:
        return None
    first = words[0]
    if not first or "=" in first or first in SHELL_FIRST or first.startswith("-"):
        return None
    return words
