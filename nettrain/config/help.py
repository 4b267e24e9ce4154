"""`nettrain-train --help`: every setting with its value and meaning, and every group's options.

There is one source for each meaning: the comment beside the setting. Plain settings are read
from the schema (nettrain/config/schema.py, its dataclass fields and their comments); a group's keys from
the option file in use (conf/<group>/<option>.yaml, the comment after each key); an option's
description is the first sentence of its file's opening comment. A schema comment that ends in
`[resume: may change]` marks a setting (on a section's field: the whole section) that a resumed run
may set differently; `resume_safe_keys` reads these marks for the resume rules (nettrain/run/resume.py),
and this page and the reference (nettrain/config/reference.py, docs/reference/settings.md) show them.

Hydra draws the page: conf/train.yaml sets `hydra.help.template: ${nettrain_help:}`, and this
resolver renders it from the composed config, so `nettrain-train model=cnn lr=0.1 --help` shows
the cnn keys and lr 0.1, and options from `--config-dir` are listed too. `--hydra-help` stays
Hydra's own page.

No torch import here: the help answers at once.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import re
import tokenize
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nettrain.config import schema as schema_module

RESOLVER = "nettrain_help"
HIDDEN_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")
_KEY_LINE = re.compile(r"^([A-Za-z_]\w*):(.*)$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(])")
# Ends the comment of a schema field that may differ when a run is resumed (it does not change
# what the run computed so far); on a field holding a section, every key of that section may.
RESUME_TAG = "[resume: may change]"

USAGE = """\
nettrain-train: train a PyTorch network from a composed config. Every line below is an override.

  nettrain-train [group=option ...] [key=value ...]   e.g. nettrain-train optimizer=sgd lr=0.05 optimizer.momentum=0.9
  nettrain-train -m batch_size=32,64,256              a sweep: one run per value
  nettrain-train resume=RUN_DIR                       continue an interrupted run from its checkpoint
                                                      (only settings marked [resume: may change] may differ)
  nettrain-train --config-dir DIR group=option        your own options, from DIR/<group>/<option>.yaml
  nettrain-train --cfg job                            print the composed config, run nothing
  nettrain-train --hydra-help                         Hydra's own help and flags
"""


@dataclass
class Section:
    """A schema dataclass: its one-line description and its fields' comments, in order."""

    doc: str = ""
    fields: dict[str, str] = field(default_factory=dict)  # name -> comment
    nested: dict[str, str] = field(default_factory=dict)  # name -> the Section's class name
    may_change: set[str] = field(default_factory=set)  # names whose comment carries RESUME_TAG


def _comments(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {tok.start[0]: tok.string.lstrip("#").strip() for tok in tokens if tok.type == tokenize.COMMENT}


def schema_sections(module: Any = None) -> dict[str, Section]:
    """Every dataclass in the schema module (nettrain.config.schema), by class name, with the comment
    beside each field (its RESUME_TAG taken off into `may_change`), read from the source."""
    if module is None:
        return _schema_module_sections()
    source = inspect.getsource(module)
    comments = _comments(source)
    classes = [node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)]
    names = {node.name for node in classes}
    sections: dict[str, Section] = {}
    for node in classes:
        section = Section(doc=(ast.get_docstring(node) or "").split("\n\n")[0].replace("\n", " "))
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                lines = range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)
                comment = next((comments[n] for n in lines if n in comments), "")
                if comment.endswith(RESUME_TAG):
                    section.may_change.add(stmt.target.id)
                    comment = comment[: -len(RESUME_TAG)].strip()
                section.fields[stmt.target.id] = comment
                annotation = ast.unparse(stmt.annotation)
                if annotation in names:
                    section.nested[stmt.target.id] = annotation
        sections[node.name] = section
    return sections


@functools.cache
def _schema_module_sections() -> dict[str, Section]:
    """nettrain.config.schema's sections, read once (the help page and every resume read them)."""
    return schema_sections(schema_module)


def safe_keys(sections: dict[str, Section]) -> tuple[str, ...]:
    """The settings of `sections` (schema_sections) that a resumed run may set differently, in the
    schema's order: each field whose comment ends in RESUME_TAG, as `key`, or as `section.` when
    the field holds a whole section."""

    def marked(name: str, prefix: str) -> list[str]:
        section = sections[name]
        keys = []
        for key in section.fields:
            if key in section.may_change:
                keys.append(f"{prefix}{key}." if key in section.nested else f"{prefix}{key}")
            elif key in section.nested:
                keys += marked(section.nested[key], f"{prefix}{key}.")
        return keys

    return tuple(marked("TrainConfig", ""))


@functools.cache
def resume_safe_keys() -> tuple[str, ...]:
    """The settings nettrain's schema marks `[resume: may change]` (safe_keys of its sections)."""
    return safe_keys(schema_sections())


def resume_mark(key: str) -> str:
    """RESUME_TAG when the setting `key` (or the section `key`) may change on resume, else ''."""
    safe = resume_safe_keys()
    return RESUME_TAG if schema_module.matches(key, safe) or f"{key}." in safe else ""


def with_mark(meaning: str, key: str) -> str:
    """`meaning` followed by `key`'s RESUME_TAG, if it has one."""
    return " ".join(part for part in (meaning, resume_mark(key)) if part)


def first_sentence(text: str) -> str:
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0] if text.strip() else ""


def option_doc(text: str) -> tuple[str, dict[str, str]]:
    """An option file's description (the first sentence of its opening comment, up to an indented
    example line) and the comment after each of its top-level keys."""
    lines = text.splitlines()
    opening = []
    for line in lines:
        if not line.startswith("#") or line.startswith("#  "):
            break
        opening.append(line.lstrip("#").strip())
    keys = {}
    for line in lines:
        match = _KEY_LINE.match(line)
        comment = re.search(r"(?:^|\s)#\s?(.*)$", match.group(2)) if match else None
        if match and comment:
            keys[match.group(1)] = comment.group(1).strip()
    return first_sentence(" ".join(opening)), keys


def _target(text: str) -> str | None:
    match = re.search(r"^_target_:\s*(\S+)", text, re.MULTILINE)
    return match.group(1) if match else None


def key_comments(options: dict[str, str], chosen: str) -> dict[str, str]:
    """The comment of each key of option `chosen`; a key it leaves bare takes the comment of the
    same key in another option with the same `_target_` (your own model.yaml gets mlp.yaml's)."""
    if chosen not in options:
        return {}
    comments: dict[str, str] = {}
    for option, text in options.items():
        if option != chosen and _target(text) == _target(options[chosen]):
            comments = {**option_doc(text)[1], **comments}
    return {**comments, **option_doc(options[chosen])[1]}


def _source_dirs(root: DictConfig) -> list[Any]:
    """The config folders Hydra searched (the package's conf/, any --config-dir), as Traversables."""
    dirs = []
    for source in OmegaConf.select(root, "hydra.runtime.config_sources", default=None) or []:
        if source.provider == "hydra":
            continue
        if source.schema == "pkg":
            dirs.append(files(source.path))
        elif source.schema == "file":
            dirs.append(Path(source.path))
    return dirs


def group_options(root: DictConfig, group: str) -> dict[str, str]:
    """Each option of `group` found on the search path -> its file's text (first folder wins)."""
    found: dict[str, str] = {}
    for folder in _source_dirs(root):
        path = folder.joinpath(group)
        if not path.is_dir():
            continue
        for entry in path.iterdir():
            name = entry.name
            if name.endswith(".yaml") and name[:-5] not in found:
                found[name[:-5]] = entry.read_text(encoding="utf-8")
    return dict(sorted(found.items()))


def fmt(value: Any) -> str:
    """A value as it would be typed in an override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


Row = tuple[str, "str | None", str]  # (key, value, meaning); value None: a heading


def _rows(sections: dict[str, Section], name: str, node: dict, prefix: str) -> list[Row]:
    """(key, value, meaning) for each field of schema class `name`, nested ones under a heading."""
    rows: list[Row] = []
    section = sections[name]
    for key, comment in section.fields.items():
        if key in section.nested:
            doc = sections[section.nested[key]].doc or comment
            rows.append((f"{prefix}{key}", None, f"\n{prefix}{key}: {with_mark(doc, prefix + key)}"))
            rows += _rows(sections, section.nested[key], node.get(key) or {}, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", fmt(node.get(key)), with_mark(comment, prefix + key)))
    return rows


def render(root: DictConfig) -> str:
    """The help page for the composed config `root` (Hydra's, with its `hydra` node)."""
    sections = schema_sections()
    plain = OmegaConf.to_container(root, resolve=False)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    choices = dict(OmegaConf.select(root, "hydra.runtime.choices", default=None) or {})
    groups = [g for g in sections["TrainConfig"].fields if g in choices]
    groups += sorted(g for g in choices if g not in groups and not g.startswith("hydra"))

    out = [USAGE, "== Config groups (group=option; * marks the one in use) =="]
    option_keys: dict[str, dict[str, str]] = {}  # group -> the comments of the chosen option's keys
    for group in groups:
        options = group_options(root, group)
        out.append(f"{group}: {', '.join(options)}")
        width = max(map(len, options), default=0)
        for option, text in options.items():
            out.append(f"{'*' if option == choices[group] else ' '} {option:<{width}}  {option_doc(text)[0]}")
        option_keys[group] = key_comments(options, choices[group])
    out += [
        "",
        "== Settings (key=value): the value in use (the default unless overridden), and its meaning ==",
        f"   {RESUME_TAG}: a resumed run (resume=RUN_DIR) may set it differently; any other change is refused",
    ]
    out += _table(_settings(sections, plain, choices, groups, option_keys))
    # Hydra passes the page through string.Template (for its $FLAGS_HELP etc.): escape every $
    return "\n".join(out).replace("$", "$$")


def _settings(
    sections: dict[str, Section], plain: dict, choices: dict, groups: list[str], option_keys: dict[str, dict[str, str]]
) -> list[Row]:
    """The top-level settings, then each group's keys and each schema section's, under headings."""
    train_config = sections["TrainConfig"]
    top: list[Row] = []
    blocks: list[Row] = []
    for key in [*train_config.fields, *(g for g in groups if g not in train_config.fields)]:
        node = plain.get(key)
        if key in choices:  # a group: its option's keys; schema comments first, then the option file's
            target = node.get("_target_") if isinstance(node, dict) else None
            blocks.append((key, None, f"\n{key}={choices[key]}" + (f": {target}" if target else "")))
            schema = sections[train_config.nested[key]].fields if key in train_config.nested else {}
            for sub, value in (node or {}).items():
                if sub not in HIDDEN_KEYS:
                    meaning = schema.get(sub) or option_keys.get(key, {}).get(sub, "")
                    blocks.append((f"{key}.{sub}", fmt(value), with_mark(meaning, f"{key}.{sub}")))
        elif key in train_config.nested:
            blocks.append((key, None, f"\n{key}: {with_mark(sections[train_config.nested[key]].doc, key)}"))
            blocks += _rows(sections, train_config.nested[key], node or {}, f"{key}.")
        else:
            top.append((key, fmt(node), with_mark(train_config.fields[key], key)))
    return top + blocks


def _table(rows: list[Row], max_value: int = 16) -> list[str]:
    """Aligned `key  value  meaning` lines; a value too long for its column gets a line of its own."""
    key_width = max(len(k) for k, v, _ in rows if v is not None)
    value_width = min(max_value, max(len(v) for _, v, _ in rows if v is not None))
    lines = []
    for key, value, meaning in rows:
        if value is None:
            lines.append(meaning)
        elif len(value) > value_width and meaning:
            lines.append(f"  {key:<{key_width}}  {value}")
            lines.append(f"  {'':<{key_width}}  {'':<{value_width}}  {meaning}")
        else:
            lines.append(f"  {key:<{key_width}}  {value:<{value_width}}  {meaning}".rstrip())
    return lines


def _resolve(*, _root_: DictConfig) -> str:
    return render(_root_)


def register() -> None:
    """Make `${nettrain_help:}` (conf/train.yaml's hydra.help.template) available."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, _resolve)
