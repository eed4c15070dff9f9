"""click's bash and zsh completion, fixed for midgram's targets and for a bare zsh.

- bash splits the line at every character of ``COMP_WORDBREAKS``, ``:`` and ``=`` included,
  so click's script, which hands bash's words over, turns ``-t udp:10.0.0.1:8080 up`` into
  ``-t udp : 10.0.0.1 : 8080 up``, and nothing completes after a UDP target. This script
  hands over the line itself (up to the cursor) and bash's current word; the line is split
  as a shell would, and each completion is cut to the part bash replaces.
- zsh: click's script registers itself with ``compdef``, which exists only once the
  completion system is loaded (``compinit``); without it, ``eval "$(midgram completion
  zsh)"`` fails with ``compdef: command not found``. This script loads it first if needed.

``register()`` makes click use these classes, both for printing the scripts and for
answering a TAB.
"""

from __future__ import annotations

import os
from typing import Any, Final

from click.shell_completion import (
    BashComplete,
    CompletionItem,
    ZshComplete,
    add_completion_class,
    split_arg_string,
)

__all__ = ["MidgramBash", "MidgramZsh", "register"]

# click's bash script, with COMP_LINE (to the cursor) and bash's current word passed on.
_SOURCE_BASH: Final = """\
%(complete_func)s() {
    local IFS=$'\\n'
    local response

    response=$(env COMP_LINE="${COMP_LINE:0:$COMP_POINT}" \
COMP_CURRENT="${COMP_WORDS[COMP_CWORD]}" %(complete_var)s=bash_complete $1)

    for completion in $response; do
        IFS=',' read type value <<< "$completion"

        if [[ $type == 'dir' ]]; then
            COMPREPLY=()
            compopt -o dirnames
        elif [[ $type == 'file' ]]; then
            COMPREPLY=()
            compopt -o default
        elif [[ $type == 'plain' ]]; then
            COMPREPLY+=($value)
        fi
    done

    return 0
}

%(complete_func)s_setup() {
    complete -o nosort -F %(complete_func)s %(prog_name)s
}

%(complete_func)s_setup;
"""

# Loads zsh's completion system when the user's .zshrc did not (compinit -i: without asking
# about insecure folders, which it then leaves out).
_ZSH_COMPINIT: Final = """\
    (( $+functions[compdef] )) || { autoload -Uz compinit && compinit -i; }
    compdef"""


class MidgramBash(BashComplete):
    """bash: the words come from the line as a shell splits it, not from COMP_WORDS."""

    source_template = _SOURCE_BASH

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cut = ""

    def get_completion_args(self) -> tuple[list[str], str]:
        line = os.environ.get("COMP_LINE")
        if line is None:  # a script printed by an older midgram
            return super().get_completion_args()
        words = split_arg_string(line)
        ends_word = not line or line[-1].isspace()
        incomplete = "" if ends_word or not words else words.pop()
        current = os.environ.get("COMP_CURRENT", "")
        # bash replaces only its own current word: the part of ours before it stays.
        if current and incomplete.endswith(current):
            self._cut = incomplete[: len(incomplete) - len(current)]
        return words[1:], incomplete

    def format_completion(self, item: CompletionItem) -> str:
        value = item.value
        if self._cut and isinstance(value, str) and value.startswith(self._cut):
            value = value[len(self._cut) :]
        return f"{item.type},{value}"


class MidgramZsh(ZshComplete):
    """zsh: click's script, loading the completion system first when it is not loaded."""

    source_template = ZshComplete.source_template.replace("    compdef", _ZSH_COMPINIT, 1)


def register() -> None:
    """Use these classes for ``bash`` and ``zsh`` (fish's works as click has it)."""
    add_completion_class(MidgramBash)
    add_completion_class(MidgramZsh)
