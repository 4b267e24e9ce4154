"""Shared fixtures: configs through Hydra's compose API, quiet in-process runs, IDX data files.

pytest-xdist's controller imports this module too, before it starts the workers: nothing here
imports torch at module level (~3 s), so the workers start that much sooner. The tutorial's
network, the reference the tests compare against, is in simplenet.py."""

from __future__ import annotations

import copy
import dataclasses
import functools
import gc
import gzip
import importlib.util
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One torch thread per xdist worker, and in the processes its tests start: two workers with
    # two threads each on two cores spend their time spinning. Runs compared for exact numbers
    # therefore all run on one thread; the newcomer's command (process="exec") runs as typed.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from nettrain.config.store import register_schema

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# device=cpu: the suite's exact comparisons are CPU figures, also on a machine with a GPU
# (tests/test_gpu.py runs the CUDA paths there). plots=false: matplotlib takes most of a small
# run's time; the tests of the plots ask for them with plots=true.
QUIET = ["console.show_config=false", "console.show_model=false", "console.progress=off", "device=cpu", "plots=false"]

register_schema()


def _read_config_files_once() -> None:
    """Hydra reads and parses every YAML file of the defaults list again for each command (about
    15 files, ~0.1 s of pure-Python YAML a compose), and copies the whole ConfigStore with each
    compose (~20 ms); a suite of a few hundred commands spends a third of its time there. Here
    each package config file (nettrain.conf, hydra.conf) is parsed once per process, keyed by its
    path, size and modification time, and every read gets a deep copy of what parsing gave: the
    same config Hydra would have built. The ConfigStore is a process-wide singleton that
    StructuredConfigSource looks up anyway and whose `load` already returns copies, so a copy of
    the source shares it. Nothing else of Hydra's composing changes."""
    from hydra._internal.sources_registry import SourcesRegistry
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # its scan runs the plugin modules again: the class to patch is the one it registers
    source = SourcesRegistry.instance().resolve("pkg")
    read = source._read_config
    parsed: dict[tuple, object] = {}

    def read_once(self, res):
        try:
            stat = os.stat(str(res))
        except (OSError, TypeError):  # not a plain file (a zip member): read as Hydra does
            return read(self, res)
        key = (str(res), stat.st_size, stat.st_mtime_ns, self.provider, self.path)
        if key not in parsed:
            parsed[key] = read(self, res)
        done = parsed[key]  # Hydra edits the result it gets: each read gets its own
        return dataclasses.replace(done, config=copy.deepcopy(done.config), header=dict(done.header))

    source._read_config = read_once
    ConfigStore.__deepcopy__ = lambda self, memo: self


_read_config_files_once()


def _parse_interpolations_once() -> None:
    """OmegaConf parses an interpolation's text (`${lr}`, `${oc.env:...}`) with ANTLR each time the
    value is read (~0.1 ms), and a command reads the same few dozen texts thousands of times:
    about 3% of the suite. Here each (text, rule, mode) is parsed once per process; the tree is
    only read afterwards (its tokens keep their own input), and a text that fails to parse is
    not cached, so it raises each time as before. `parse` is bound by name where it is used."""
    import omegaconf.base
    import omegaconf.resolvers.oc
    from omegaconf import _utils, grammar_parser

    parse = functools.lru_cache(maxsize=4096)(grammar_parser.parse)
    for module in (grammar_parser, omegaconf.base, _utils, omegaconf.resolvers.oc):
        assert module.parse is grammar_parser.parse, module  # an OmegaConf that binds it elsewhere: look again
    for module in (grammar_parser, omegaconf.base, _utils, omegaconf.resolvers.oc):
        module.parse = parse


_parse_interpolations_once()


# the package config sources that no test writes to (Hydra's plugins store their options in the
# ConfigStore, the "structured" source)
INSTALLED_SOURCES = {"nettrain.conf", "hydra.conf"}


def _compose_each_structure_once() -> None:
    """Hydra builds a command's defaults list (the group choices, ~35% of composing) and merges the
    chosen files into one config (~40%) anew for every command, and the tests' commands mostly
    differ in plain values (`epochs=2`, `data.path=...`) over a few dozen structures. Here both are
    done once per structure and process: a structure is the config name, the overrides that are
    not config overrides by Hydra's own rule (group choices, additions and deletions of groups:
    Overrides in hydra/_internal/defaults_list.py), the sweep flag, the config sources and what
    Hydra's ConfigStore holds (a test may take an entry out). A later command gets the same
    defaults list with its own config overrides, in its own order, and a deep copy of the merged
    config; Hydra then applies the overrides and fills in the hydra.* values as always. Not
    cached, and composed by Hydra as before: a search path with any source but the installed
    packages' (INSTALLED_SOURCES) and the ConfigStore (a run folder, --config-dir,
    hydra.searchpath: files a test may change), and a structure whose group overrides themselves
    carry config overrides (a dict value)."""
    from hydra._internal import config_loader_impl
    from hydra._internal.defaults_list import DefaultsList
    from hydra.core.config_store import ConfigStore

    def _stored() -> tuple:
        entries: list[tuple[str, int]] = []

        def walk(node: dict, prefix: str) -> None:
            for name, entry in node.items():
                if isinstance(entry, dict):
                    walk(entry, f"{prefix}{name}/")
                else:
                    entries.append((prefix + name, id(entry)))

        walk(ConfigStore.instance().repo, "")
        return tuple(sorted(entries))

    create = config_loader_impl.create_defaults_list
    merge = config_loader_impl.ConfigLoaderImpl._compose_config_from_defaults_list
    structures: dict[tuple, DefaultsList] = {}
    # id(a cached structure's defaults) -> its merged config once merged (kept alive in
    # `structures`, so the id names that list alone)
    merged: dict[int, object] = {}

    def create_once(repo, config_name, overrides_list, prepend_hydra, skip_missing):
        sources = tuple((s.scheme(), s.provider, s.path) for s in repo.get_sources())
        if not all(scheme == "structured" or path in INSTALLED_SOURCES for scheme, _, path in sources):
            return create(repo, config_name, overrides_list, prepend_hydra, skip_missing)

        def value(o) -> bool:  # a config override, as Overrides tells them from group overrides
            return not o.is_sweep_override() and (isinstance(o.value(), dict) or not repo.group_exists(o.key_or_group))

        structure = [o for o in overrides_list if not value(o)]
        key = (config_name, tuple(o.input_line for o in structure), prepend_hydra, skip_missing, sources, _stored())
        if key not in structures:
            done = create(repo, config_name, structure, prepend_hydra, skip_missing)
            if done.config_overrides:
                return create(repo, config_name, overrides_list, prepend_hydra, skip_missing)
            structures[key], merged[id(done.defaults)] = done, None
        done = structures[key]
        return DefaultsList(done.defaults, done.defaults_tree, [o for o in overrides_list if value(o)], done.overrides)

    def merge_once(self, defaults, repo):
        if id(defaults) not in merged:  # not a cached structure's
            return merge(self, defaults, repo)
        if merged[id(defaults)] is None:
            cfg = merge(self, defaults, repo)
            merged[id(defaults)] = copy.deepcopy(cfg)  # Hydra edits the config it gets: each gets a copy
            return cfg
        return copy.deepcopy(merged[id(defaults)])

    config_loader_impl.create_defaults_list = create_once
    config_loader_impl.ConfigLoaderImpl._compose_config_from_defaults_list = merge_once
    HYDRA_COMPOSING.update(create=create, merge=merge, create_once=create_once, merge_once=merge_once)


HYDRA_COMPOSING: dict = {}  # Hydra's two functions and their once-per-structure stand-ins (tests/test_conftest.py)


_compose_each_structure_once()

SHM = Path("/dev/shm")
SHM_FREE = 4 * 2**30  # the quick tier writes ~0.8 GB (checkpoints, mostly) while it runs


def pytest_configure(config: pytest.Config) -> None:
    """The tests' folders (tmp_path) in memory where the system has a tmpfs at /dev/shm with room:
    each run writes and fsyncs its checkpoints, ~0.8 GB over the quick tier, and on a disk the
    workers wait for it (about a sixth of the wall time of the modules that resume runs). Through
    pytest's own PYTEST_DEBUG_TEMPROOT, so the folders stay numbered per session as usual; not
    when --basetemp, PYTEST_DEBUG_TEMPROOT or TMPDIR is given. A session that passes removes
    its folders (tmp_path_retention_policy = "failed" in pyproject.toml)."""
    if config.option.basetemp or os.environ.get("PYTEST_DEBUG_TEMPROOT") or os.environ.get("TMPDIR"):
        return
    try:
        room = os.statvfs(SHM)
    except OSError:  # no /dev/shm (macOS, Windows)
        return
    if room.f_bavail * room.f_frsize >= SHM_FREE and os.access(SHM, os.W_OK | os.X_OK):
        os.environ["PYTEST_DEBUG_TEMPROOT"] = str(SHM)


def installed(module: str) -> bool:
    """Whether `module` can be imported (found without importing it; a missing parent is False)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def needs_extra(extra: str, *modules: str) -> pytest.MarkDecorator:
    """Skip the test, saying which extra to install, unless the optional extra's `modules` are
    installed: the suite passes on a core install (`pip install nettrain`) as on a full one."""
    missing = [m for m in modules if not installed(m)]
    return pytest.mark.skipif(
        bool(missing),
        reason=f'needs the [{extra}] extra ({", ".join(missing)} not installed): pip install "nettrain[{extra}]"',
    )


def make_cfg(*overrides: str):
    """The composed run config, exactly as `nettrain-train OVERRIDES` would see it.

    Composing takes ~0.2 s, most of a small test's time, and the tests compose a few dozen
    structures (the group choices) with many different values. So the structure is composed
    once, by Hydra, for the overrides that are not plain `key.sub=value`s; a test gets a deep
    copy, with the plain values applied by Hydra's own code for that step
    (ConfigLoaderImpl._apply_overrides_to_config, which compose runs after merging the groups)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    overrides = (*QUIET, *overrides)
    values = tuple(o for o in overrides if _is_plain_value(o))
    cfg = copy.deepcopy(_composed(tuple(o for o in overrides if o not in values), os.getcwd()))
    try:
        ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides(list(values)), cfg)
    except HydraException:  # a bad key or value: the error exactly as compose raises it
        return copy.deepcopy(_composed(overrides, os.getcwd()))
    return cfg


GROUPS = {p.name for p in CONF.iterdir() if p.is_dir()}  # data, model, optimizer, ..., hydra


def _is_plain_value(override: str) -> bool:
    """`key=value` for a key that is not a config group (`epochs=2`, `data.num_samples=300`):
    not a group choice (`data=mnist`), an addition or deletion (`+k`, `~k`), a package (`@`) or a
    Hydra setting."""
    key = override.split("=", 1)[0]
    if "=" not in override or any(c in key for c in "/@+~") or key.startswith("hydra."):
        return False
    return "." in key or key not in GROUPS


@functools.cache
def _composed(overrides: tuple[str, ...], cwd: str):
    with initialize_config_module("nettrain.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture
def cfg_for():
    return make_cfg


@pytest.fixture
def run(tmp_path, capsys):
    """Train in-process with overrides; returns (summary, output_dir)."""
    from nettrain.commands.train import train

    def _run(*overrides: str, output_dir: Path | None = None):
        out = output_dir or tmp_path / "run"
        summary = train(make_cfg(*overrides), output_dir=out)
        return summary, out

    return _run


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write an IDX file (the MNIST format): magic, dims, then big-endian uint8 data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist_raw(root: Path, name: str = "MNIST", n_train: int = 120, n_test: int = 40, seed: int = 0) -> Path:
    """Small MNIST-format IDX files in torchvision's layout: ROOT/<name>/raw/*-ubyte.

    Images are class-dependent blobs plus noise, so a model can learn them."""
    rng = np.random.default_rng(seed)

    def images_labels(n):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, label in enumerate(labels):
            r, c = divmod(int(label), 5)
            images[i, 4 + r * 10 : 12 + r * 10, 2 + c * 5 : 6 + c * 5] = 255
        return images, labels

    raw = root / name / "raw"
    x, y = images_labels(n_train)
    write_idx(raw / "train-images-idx3-ubyte", x)
    write_idx(raw / "train-labels-idx1-ubyte", y)
    x, y = images_labels(n_test)
    write_idx(raw / "t10k-images-idx3-ubyte", x)
    write_idx(raw / "t10k-labels-idx1-ubyte", y)
    return root


@pytest.fixture
def mnist_root(tmp_path):
    root = tmp_path / "datasets"
    write_mnist_raw(root, "MNIST")
    write_mnist_raw(root, "FashionMNIST", seed=1)
    return root


def cli(
    *args: str,
    cwd: Path,
    env_extra: dict | None = None,
    timeout: int = 240,
    plots: bool | None = False,
    process: bool | str = False,
) -> subprocess.CompletedProcess:
    """`nettrain-train ARGS` run in `cwd`, through the console script's own `main()`: by default
    in this process (`in_process`); process=True in a fresh process of its own, forked from a
    server that has done the imports (tests/fresh.py), for the tests where the process matters
    (its signals, its peak memory); process="exec" runs the installed console script itself.
    None is a terminal: no progress bar. plots=False adds `plots=false` (matplotlib is most of a
    small run's time) unless the args set `plots`; None adds nothing: the command exactly as given."""
    info = ("--help", "--hydra-help", "--cfg", "-c", "--info", "-i", "--version", "--shell-completion")
    if plots is not None and not any(a.startswith("plots=") or a in info for a in args):
        args = (*args, f"plots={str(plots).lower()}")
    if not process:
        return in_process("nettrain.commands.train:main", "nettrain-train", *args, cwd=cwd, env_extra=env_extra)
    if process is True:
        import fresh

        return fresh.command("nettrain.commands.train:main", "nettrain-train", *args, cwd=cwd, env_extra=env_extra)
    exe = Path(sys.executable).with_name("nettrain-train")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torch's own thread count
    env.update(env_extra or {})
    env.pop("HYDRA_FULL_ERROR", None) if not (env_extra and "HYDRA_FULL_ERROR" in env_extra) else None
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def in_process(entry: str, prog: str, *args: str, cwd: Path, env_extra: dict | None = None):
    """Run a console script's function (`module:function`) as `PROG ARGS` in `cwd`, in this
    process, and return what a subprocess would: exit code, stdout and stderr. An uncaught
    exception prints its traceback to stderr and exits 1, as the interpreter does.

    A command started in a fresh interpreter saves 3-4 s of imports (torch, torch._dynamo on the
    optimizer's first use, Hydra) here. What one command leaves behind in the process is put back
    afterwards, so the next starts as a fresh one would: argv, the working directory, sys.path and
    modules imported from the working directory, the environment, warnings, the root logger,
    Hydra's global state and its HydraConfig, and the module state a multirun leaves (its summary, the published run
    dir). Process-wide torch settings are the run's own business: `train()` restores them (tested
    in test_reproducibility.py)."""
    import contextlib
    import importlib
    import io
    import logging
    import traceback
    import warnings

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from nettrain.commands import sweep_callback
    from nettrain.run import launch

    module, function = entry.split(":")
    saved_argv, saved_path, saved_env, saved_cwd = sys.argv, list(sys.path), dict(os.environ), os.getcwd()
    saved_modules = set(sys.modules)
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    out, err = io.StringIO(), io.StringIO()
    code: int = 0
    os.environ.pop("HYDRA_FULL_ERROR", None)
    os.environ.update(env_extra or {})
    sys.argv = [prog, *args]
    sweep_callback._last_summary, sweep_callback._last_error, launch._published = None, None, False
    GlobalHydra.instance().clear()
    saved_hydra_config = HydraConfig.instance().cfg  # the command sets it: a later train() must not see it
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("default")  # a fresh process shows each warning once
            try:  # as the console script's wrapper does: sys.exit(function())
                raise SystemExit(getattr(importlib.import_module(module), function)())
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = saved_hydra_config
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv, sys.path[:] = saved_argv, saved_path
        here = str(Path(cwd).resolve())
        for name in set(sys.modules) - saved_modules:
            if str(getattr(sys.modules[name], "__file__", None) or "").startswith(here):
                del sys.modules[name]
    return subprocess.CompletedProcess([prog, *args], code, out.getvalue(), err.getvalue())


def _log_file_handlers() -> list[tuple[logging.Logger, logging.FileHandler]]:
    loggers = [
        logging.getLogger(),
        *(lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)),
    ]
    return [(lg, h) for lg in loggers for h in lg.handlers if isinstance(h, logging.FileHandler)]


@pytest.fixture(autouse=True)
def _log_files_close_with_their_test():
    """A test that calls a command's main() itself (rather than through `cli`) leaves Hydra's
    train.log handler on the root logger. Its folder (tmp_path) is removed once the test passes,
    and a later test's log line would reopen the file there: each log file a test opened is
    closed and taken off its logger when the test ends."""
    before = {handler for _, handler in _log_file_handlers()}
    yield
    for log, handler in _log_file_handlers():
        if handler not in before:
            log.removeHandler(handler)
            handler.close()


def pytest_collection_finish(session):
    """What collection imported (torch, Hydra, NumPy, nettrain: about a million objects) is
    never garbage, yet every full collection walks it: ~0.25 s each, 20-odd times a worker.
    Freezing it leaves it out of them (gc.freeze: moved to the permanent generation)."""
    gc.freeze()


@pytest.fixture(autouse=True, scope="module")
def _freeze_what_a_module_leaves():
    """The same after each module, for what its tests imported (torch._dynamo, MLflow, Optuna,
    ...): collect the module's garbage, then freeze the rest, so that the collection walks only
    what is new since the last module."""
    yield
    gc.collect()
    gc.freeze()
