"""Shell completion scripts for ``recon``, written from the command tree itself.

The script is static: commands, options and fixed choices are spelled out in it, so pressing Tab
does not start Python (and torch). It is regenerated with ``recon completion bash`` after an
upgrade. Values without a fixed list (paths, numbers) fall back to the shell's file completion.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional

SHELLS = ("bash", "zsh")

_SAFE = re.compile(r"^[A-Za-z0-9_.:+=,@%/-]+$")


def _words(values) -> str:
    """Space-separated words for ``compgen -W``; anything a shell would expand is left out."""
    return " ".join(v for v in values if _SAFE.match(v))


def _choices(param, ctx) -> List[str]:
    """The fixed values of an option or argument (its Enum or Literal choices), else ``[]``."""
    try:
        items = param.shell_complete(ctx, "")
    except Exception:  # noqa: BLE001 - a parameter without a completion of its own: no fixed values
        return []
    return [str(item.value) for item in items if getattr(item, "type", "plain") == "plain"]


def _is_option(param) -> bool:
    return getattr(param, "param_type_name", "") == "option"


def _takes_value(param) -> bool:
    return not (getattr(param, "is_flag", False) or getattr(param, "count", False))


def describe(root, ctx) -> Dict[str, dict]:
    """``{"": root, command name: ...}``: each one's visible option spellings, the options that take a
    value (with their fixed choices, if any) and the fixed choices of its first argument."""
    tree = {"": _describe_command(root, ctx)}
    for name, command in root.commands.items():
        if command.hidden:
            continue
        sub = command.make_context(name, [], parent=ctx, resilient_parsing=True)
        tree[name] = _describe_command(command, sub)
    return tree


def _describe_command(command, ctx) -> dict:
    options, values = [], {}
    first_argument: Optional[List[str]] = None
    params = list(command.params)
    help_option = command.get_help_option(ctx)
    if help_option is not None:
        params.append(help_option)
    for param in params:
        if getattr(param, "hidden", False):
            continue
        if _is_option(param):
            spellings = list(param.opts) + list(param.secondary_opts)
            options += spellings
            if _takes_value(param):
                choices = _choices(param, ctx)
                for spelling in param.opts:
                    values[spelling] = choices
        elif first_argument is None:
            first_argument = _choices(param, ctx)
    return {"options": options, "values": values, "argument": first_argument or []}


def bash_script(root, ctx, prog: str = "recon") -> str:
    """A bash completion script for ``root`` (a click command group) named ``prog``."""
    tree = describe(root, ctx)
    function = "_" + re.sub(r"\W", "_", prog) + "_complete"
    commands = [name for name in tree if name]
    cases = []
    for name, info in tree.items():
        lines = [f'        {name or chr(34) * 2})']
        with_choices = {o: c for o, c in info["values"].items() if c}
        free = [o for o, c in info["values"].items() if not c]
        if with_choices or free:
            lines.append('            case "$prev" in')
            for option, choices in with_choices.items():
                lines.append(f'                {option}) COMPREPLY=( $(compgen -W "{_words(choices)}" -- "$cur") ); '
                             'return 0 ;;')
            if free:
                lines.append(f'                {"|".join(free)}) return 0 ;;')
            lines.append("            esac")
        lines.append(f'            opts="{_words(info["options"])}"')
        lines.append(f'            takes="{_words(info["values"])}"')
        lines.append(f'            first="{_words(commands if not name else info["argument"])}"')
        lines.append("            ;;")
        cases.append("\n".join(lines))
    body = "\n".join(cases)
    return f"""# bash completion for {prog}, written by `{prog} completion bash` from its commands.
# Load it in ~/.bashrc:  eval "$({prog} completion bash)"
{function}() {{
    local cur prev cmd i word opts takes first nargs
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev=""
    (( COMP_CWORD > 0 )) && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    cmd=""
    for (( i = 1; i < COMP_CWORD; i++ )); do
        case "${{COMP_WORDS[i]}}" in
            -*) ;;
            *) cmd="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    case "$cmd" in
{body}
        *) return 0 ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
        return 0
    fi
    # the fixed choices of the first argument (or the command names), offered only in its place
    nargs=0
    if [[ -n "$cmd" ]]; then
        for (( i = i + 1; i < COMP_CWORD; i++ )); do
            word="${{COMP_WORDS[i]}}"
            if [[ "$word" == -* ]]; then
                [[ " $takes " == *" $word "* ]] && (( i++ ))
            else
                (( nargs++ ))
            fi
        done
    fi
    if (( nargs == 0 )) && [[ -n "$first" ]]; then
        COMPREPLY=( $(compgen -W "$first" -- "$cur") )
    fi
    return 0
}}
complete -o default -F {function} {prog}
"""


def zsh_script(root, ctx, prog: str = "recon") -> str:
    """The bash script run through zsh's ``bashcompinit``, which reads bash completion functions."""
    return (f"# zsh completion for {prog}, written by `{prog} completion zsh`.\n"
            f"# Load it in ~/.zshrc after compinit:  eval \"$({prog} completion zsh)\"\n"
            "autoload -U +X bashcompinit && bashcompinit\n" + bash_script(root, ctx, prog))


def script(shell: str, root, ctx, prog: str = "recon") -> str:
    """The completion script for ``shell`` (one of :data:`SHELLS`)."""
    if shell == "bash":
        return bash_script(root, ctx, prog)
    if shell == "zsh":
        return zsh_script(root, ctx, prog)
    raise ValueError(f"shell must be one of {', '.join(SHELLS)}; got {shell!r}")
