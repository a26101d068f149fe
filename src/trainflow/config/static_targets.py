"""A `_target_`'s parameters read from its source file, without importing it.

Every step checks its overrides before `@hydra.main` starts (trainflow.cli),
and importing a target to read its signature runs what its module imports:
torch and Lightning, paid by a user with a typo and by a pipeline that
only looks up cached runs (bench/startup.py measures it). The source says the same thing, so here the
module file is found as the import system would find it (top-level package
by `find_spec`, then folders by hand, so that no package `__init__` runs),
parsed, and followed through `from x import Name` re-exports, `import *`
and a single base class to the `__init__` (or function) that Hydra calls.

Whatever cannot be decided without running code (an extension module, a
decorated function or class, a name bound conditionally or computed, a
class with several bases) is answered with None: the step's own check
imports the target and judges it there. This module never guesses, because
a wrong signature here would refuse a config that runs.

What it saves: a typo'd override (`train experiment=example
+model.optimizer.lrr=1`) is refused in 2.5 s read from source against
22.8 s with the targets imported, the same `error:` line (medians of 3,
interleaved: `uv run python bench/precheck.py`, 2026-12-07, 2 cores at load
average 5.8-6.3). A pipeline whose steps are all cached is spared the same
imports (tests/test_light_imports.py holds both to no torch at all).
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import importlib.machinery
import importlib.util
import inspect
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

# Modules read by name, never parsed: annotations need only what their names mean.
_KNOWN_MODULES = frozenset({"builtins", "typing", "typing_extensions", "collections.abc", "types", "abc"})
# Bases that add no `__init__`, and the one metaclass that leaves calling a class as it is
_PLAIN_BASES = frozenset({"builtins.object", "typing.Generic", "typing.Protocol", "typing_extensions.Protocol",
                          "abc.ABC"})
_PLAIN_METACLASS = "abc.ABCMeta"
_UNION_HEADS = frozenset({"typing.Union", "typing.Optional", "typing_extensions.Union", "typing_extensions.Optional"})
# re-exports, aliases and base classes followed before giving up (a cycle ends here too)
_MAX_HOPS = 24
# calls that can bind module names no statement shows
_DYNAMIC_CALLS = frozenset({"globals", "vars", "setattr", "exec", "__import__"})
_NOT_MODULES = (*importlib.machinery.EXTENSION_SUFFIXES, *importlib.machinery.BYTECODE_SUFFIXES)
_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


class TargetNotFound(ImportError):
    """The target's module file, or the name in it, does not exist: importing it would fail."""


class TargetSignature(NamedTuple):
    """What config validation judges a `_target_` node by (trainflow.config.validate)."""

    signature: inspect.Signature
    check_config: Callable[[str, Any], None] | None


class _Undecided(Exception):
    """Only running the code could tell."""


@dataclass(frozen=True)
class _Module:
    name: str
    path: Path | None  # None: a namespace package, which has no source of its own
    folders: tuple[Path, ...] | None  # a package's folders; None for a plain module


@dataclass(frozen=True)
class _Def:
    module: _Module
    node: ast.ClassDef | ast.FunctionDef


@dataclass(frozen=True)
class _Alias:
    """`Name = <expression>` at module level (a type alias, mostly)."""

    module: _Module
    value: ast.expr


@dataclass(frozen=True)
class _Known:
    """A name from a module read by name only (`typing.Any`, `builtins.float`)."""

    qualname: str


_Binding = _Def | _Alias | _Known | _Module


def read_target(target: str) -> TargetSignature | None:
    """The parameters of what `target` names, from source; None when only importing it could tell.

    Raises TargetNotFound where the import would fail for sure (no such
    module file, no such name in a module that binds names only by
    statements).
    """
    try:
        module, names = _split(target)
        if len(names) != 1:  # a module, or an attribute of an attribute
            return None
        found = _lookup(module, names[0], 0)
        if found is None:
            raise TargetNotFound(f"module '{module.name}' has no attribute '{names[0]}'")
        if not isinstance(found, _Def):
            return None
        if isinstance(found.node, ast.ClassDef):
            return _class_signature(found.module, found.node, 0)
        if found.node.decorator_list:
            return None
        return TargetSignature(_signature(found.module, found.node, skip_first=False), None)
    except (_Undecided, RecursionError, SyntaxError, OSError, UnicodeDecodeError, ValueError, TypeError):
        return None


def class_attribute(target: str, attribute: str) -> ast.expr | None:
    """The expression a class assigns to `attribute` in its body, or else its nearest readable base's.

    For what a class declares rather than what it takes (a data module's
    `preprocessing_keys`): found by the same resolution as `read_target`.
    None when neither the class nor a base it names says, or the source
    cannot tell.
    """
    try:
        module, names = _split(target)
        found = _lookup(module, names[0], 0) if len(names) == 1 else None
    except (TargetNotFound, _Undecided, RecursionError, SyntaxError, OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(found, _Def) or not isinstance(found.node, ast.ClassDef):
        return None
    return _attribute_in(found, attribute, 0)


def _attribute_in(found: _Def, attribute: str, hops: int) -> ast.expr | None:
    if hops > _MAX_HOPS:
        return None
    for stmt in found.node.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == attribute for t in stmt.targets):
            return stmt.value
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == attribute:
            return stmt.value
    for expr in typing.cast(ast.ClassDef, found.node).bases:
        try:
            base = _base(found.module, expr, hops)
        except (_Undecided, RecursionError, SyntaxError, OSError, UnicodeDecodeError, ValueError):
            continue  # an unreadable base declares nothing here; the next one may
        value = _attribute_in(base, attribute, hops + 1) if base is not None else None
        if value is not None:
            return value
    return None


# Finding module files -------------------------------------------------------------------------------------------


def _split(target: str) -> tuple[_Module, list[str]]:
    """The deepest module `target` names by its files, and the attribute names after it."""
    parts = target.split(".")
    module = _top_level(parts[0])
    if module is None:
        raise TargetNotFound(f"no module named '{parts[0]}'")
    rest = parts[1:]
    while rest and module.folders is not None:
        sub = _submodule(module, rest[0])
        if sub is None:
            break
        module, rest = sub, rest[1:]
    if len(rest) > 1 and _lookup(module, rest[0], 0) is None:
        raise TargetNotFound(f"no module named '{module.name}.{rest[0]}'")
    return module, rest


def _top_level(name: str) -> _Module | None:
    """A top-level module or package; `find_spec` of a top-level name imports nothing."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        raise _Undecided from exc
    if spec is None:
        return None
    folders = tuple(Path(p) for p in spec.submodule_search_locations or ()) or None
    origin = spec.origin
    if origin is None and folders is not None:
        return _Module(name, None, folders)
    if origin is None or not origin.endswith(".py"):
        raise _Undecided  # built in, compiled or frozen
    return _Module(name, Path(origin), folders)


def _submodule(package: _Module, name: str) -> _Module | None:
    """`package.name` as the import system's path finder would find it, by folders and files alone."""
    portions: list[Path] = []
    for folder in package.folders or ():
        child = folder / name
        if (child / "__init__.py").is_file():
            return _Module(f"{package.name}.{name}", child / "__init__.py", (child,))
        if any((folder / (name + suffix)).exists() for suffix in _NOT_MODULES):
            raise _Undecided  # a compiled module: no source to read
        if (folder / f"{name}.py").is_file():
            return _Module(f"{package.name}.{name}", folder / f"{name}.py", None)
        if child.is_dir():
            portions.append(child)
    return _Module(f"{package.name}.{name}", None, tuple(portions)) if portions else None


def _module(dotted: str) -> _Module | None:
    first, *rest = dotted.split(".")
    module = _top_level(first)
    for name in rest:
        if module is None:
            return None
        module = _submodule(module, name)
    return module


def _absolute(module: _Module, imported: str | None, level: int) -> str:
    """The module an `import` statement in `module` names, relative ones resolved as Python does."""
    package = module.name if module.folders is not None else module.name.rpartition(".")[0]
    try:
        return importlib.util.resolve_name("." * level + (imported or ""), package)
    except ImportError:
        raise _Undecided from None


# Reading what a name is bound to --------------------------------------------------------------------------------


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_bytes(), filename=str(path))


def _lookup(module: _Module, name: str, hops: int) -> _Binding | None:
    """What `module.name` is, following re-exports; None when the module surely lacks it."""
    if hops > _MAX_HOPS:
        raise _Undecided
    if module.path is None:  # a namespace package holds only its submodules
        return _submodule(module, name)
    if name in _bound_in_blocks(module.path):
        raise _Undecided  # under `if`/`try`/`with`: which binding holds depends on the run
    bound = _top_bindings(module.path).get(name)
    if bound is not None:
        return _follow(module, bound, name, hops)
    for stmt in _tree(module.path).body:
        if isinstance(stmt, ast.ImportFrom) and any(alias.name == "*" for alias in stmt.names):
            source = _module(_absolute(module, stmt.module, stmt.level))
            if source is None or source.path is None:
                raise _Undecided
            if not _star_exports(source.path, name):
                continue
            found_there = _lookup(source, name, hops + 1)
            if found_there is not None:
                return found_there
    if module.folders is not None:
        sub = _submodule(module, name)  # `import pkg.name` anywhere binds it on the package
        if sub is not None:
            return sub
    if _binds_dynamically(module.path):
        raise _Undecided
    return None


@functools.cache
def _top_bindings(path: Path) -> dict[str, ast.AST]:
    """Each name a module binds by a statement of its own level, with the statement (part) that binds it last."""
    bindings: dict[str, ast.AST] = {}
    for stmt in _tree(path).body:
        for name in _bound_names(stmt):
            found = _binding_in(stmt, name)
            if found is not None:
                bindings[name] = found
    return bindings


@functools.cache
def _bound_in_blocks(path: Path) -> frozenset[str]:
    """Names bound inside a module-level `if`, `try`, `with`, loop or `match`, where the run decides the binding."""
    names: set[str] = set()
    for stmt in _tree(path).body:
        inner = list(_inner_statements(stmt))
        if inner:
            names.update(_bound_names(stmt))  # a loop's or a `with`'s own targets
            names.update(name for nested in inner for name in _bound_names(nested))
    return frozenset(names)


def _inner_statements(stmt: ast.stmt) -> Iterator[ast.stmt]:
    """The statements inside a block statement, at any depth, but not inside a function or class."""
    if isinstance(stmt, _DEFS):
        return
    for child in ast.iter_child_nodes(stmt):
        if isinstance(child, ast.stmt):
            inner = [child]
        elif isinstance(child, ast.ExceptHandler | ast.match_case):
            inner = child.body
        else:
            continue
        for nested in inner:
            yield nested
            yield from _inner_statements(nested)


def _bound_names(stmt: ast.AST) -> list[str]:
    """The names one statement binds at its own level (not inside a block it opens)."""
    if isinstance(stmt, _DEFS):
        return [stmt.name]
    if isinstance(stmt, ast.ImportFrom | ast.Import):
        return [alias.asname or alias.name.split(".")[0] for alias in stmt.names if alias.name != "*"]
    if isinstance(stmt, ast.Assign):
        return [name for target in stmt.targets for name in _names(target)]
    if isinstance(stmt, ast.AnnAssign | ast.AugAssign | ast.For | ast.AsyncFor):
        return list(_names(stmt.target))
    if isinstance(stmt, ast.With | ast.AsyncWith):
        return [name for item in stmt.items if item.optional_vars for name in _names(item.optional_vars)]
    return []


def _binding_in(stmt: ast.stmt, name: str) -> ast.AST | None:
    """The part of one statement that binds `name` at its own level, if it does."""
    if isinstance(stmt, _DEFS):
        return stmt if stmt.name == name else None
    if isinstance(stmt, ast.ImportFrom | ast.Import):
        for alias in stmt.names:
            bound = alias.asname or alias.name.split(".")[0]
            if alias.name != "*" and bound == name:
                return ast.ImportFrom(stmt.module, [alias], stmt.level) if isinstance(stmt, ast.ImportFrom) \
                    else ast.Import([alias])
        return None
    if isinstance(stmt, ast.Assign):
        if any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
            return stmt
        if any(name in _names(t) for t in stmt.targets):
            return ast.Pass()  # unpacked: not followed
        return None
    if isinstance(stmt, ast.AnnAssign | ast.AugAssign) and isinstance(stmt.target, ast.Name) \
            and stmt.target.id == name:
        return stmt if isinstance(stmt, ast.AnnAssign) and stmt.value is not None else ast.Pass()
    return None


def _names(target: ast.AST) -> Iterator[str]:
    """Names an assignment target binds: `a`, `a, *b`; not `a.x = ...` or `a[0] = ...`, which bind nothing."""
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for item in target.elts:
            yield from _names(item)
    elif isinstance(target, ast.Starred):
        yield from _names(target.value)


def _follow(module: _Module, bound: ast.AST, name: str, hops: int) -> _Binding:
    if isinstance(bound, ast.ClassDef | ast.FunctionDef):
        return _Def(module, bound)
    if isinstance(bound, ast.ImportFrom):
        source_name = _absolute(module, bound.module, bound.level)
        imported = bound.names[0].name
        if source_name in _KNOWN_MODULES:
            return _Known(f"{source_name}.{imported}")
        source = _module(source_name)
        if source is None:
            raise _Undecided
        found = _lookup(source, imported, hops + 1)
        if found is None:
            raise _Undecided  # the module would fail to import; its own import error says why
        return found
    if isinstance(bound, ast.Import):
        dotted = bound.names[0].name if bound.names[0].asname else name
        if dotted in _KNOWN_MODULES:
            return _Known(dotted)
        imported_module = _module(dotted)
        if imported_module is None:
            raise _Undecided
        return imported_module
    if isinstance(bound, ast.Assign | ast.AnnAssign) and bound.value is not None:
        if isinstance(bound.value, ast.Name | ast.Attribute):
            return _resolve(module, bound.value, hops + 1)
        return _Alias(module, bound.value)
    raise _Undecided  # an async function, an unpacking, an augmented assignment


def _resolve(module: _Module, expr: ast.expr, hops: int) -> _Binding:
    """What a name or a dotted name in `module`'s source refers to."""
    if isinstance(expr, ast.Name):
        if hasattr(builtins, expr.id) and not _bound_at_top(module, expr.id):
            return _Known(f"builtins.{expr.id}")
        found = _lookup(module, expr.id, hops)
    elif isinstance(expr, ast.Attribute):
        owner = _resolve(module, expr.value, hops + 1)
        if isinstance(owner, _Known):
            return _Known(f"{owner.qualname}.{expr.attr}")
        if not isinstance(owner, _Module):
            raise _Undecided
        found = _lookup(owner, expr.attr, hops + 1)
    else:
        raise _Undecided
    if found is None:
        raise _Undecided
    return found


def _bound_at_top(module: _Module, name: str) -> bool:
    return module.path is not None and name in _top_bindings(module.path)


@functools.cache
def _star_exports(path: Path, name: str) -> bool:
    """Whether `from module import *` can bind `name`: listed in `__all__`, or public where there is none."""
    tree = _tree(path)
    mentions = sum(isinstance(node, ast.Name) and node.id == "__all__" for node in ast.walk(tree))
    if mentions == 0:
        return not name.startswith("_")
    listed = _top_bindings(path).get("__all__")
    if mentions == 1 and isinstance(listed, ast.Assign):  # one literal list, never extended
        try:
            return name in ast.literal_eval(listed.value)
        except ValueError:
            pass
    return True  # computed or extended: cannot rule it out


@functools.cache
def _binds_dynamically(path: Path) -> bool:
    """A module `__getattr__`, or a call that can bind names no statement shows."""
    tree = _tree(path)
    if any(isinstance(stmt, ast.FunctionDef) and stmt.name == "__getattr__" for stmt in tree.body):
        return True
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _DYNAMIC_CALLS
               for node in ast.walk(tree))


# Signatures -----------------------------------------------------------------------------------------------------


def _class_signature(module: _Module, node: ast.ClassDef, hops: int) -> TargetSignature:
    """What calling the class takes: its own `__init__`, or its one base class's."""
    if hops > _MAX_HOPS or node.decorator_list or _has_metaclass(module, node, hops):
        raise _Undecided  # a decorator (dataclass) may make `__init__`, a metaclass may take the call
    init = None
    for stmt in node.body:
        for special in ("__new__", "__signature__", "__init__"):
            bound = _binding_in(stmt, special)
            if bound is None:
                continue
            if special != "__init__" or not isinstance(bound, ast.FunctionDef) or bound.decorator_list:
                raise _Undecided
            init = bound
    if init is not None:
        return TargetSignature(_signature(module, init, skip_first=True), _hook(module, node))
    bases = [base for base in (_base(module, b, hops) for b in node.bases) if base is not None]
    if len(bases) != 1:
        raise _Undecided  # several bases: which `__init__` wins is the MRO's call
    inherited = _class_signature(bases[0].module, typing.cast(ast.ClassDef, bases[0].node), hops + 1)
    return TargetSignature(inherited.signature, _hook(module, node) or inherited.check_config)


def _base(module: _Module, expr: ast.expr, hops: int) -> _Def | None:
    """A base class to follow; None for one that adds no `__init__` (object, Generic[T], Protocol, ABC)."""
    found = _resolve(module, expr.value if isinstance(expr, ast.Subscript) else expr, hops + 1)
    if isinstance(found, _Known) and found.qualname in _PLAIN_BASES:
        return None
    if isinstance(found, _Def) and isinstance(found.node, ast.ClassDef):
        return found
    raise _Undecided


def _has_metaclass(module: _Module, node: ast.ClassDef, hops: int) -> bool:
    """Whether the class, or a base that can be read, names a metaclass (other than ABCMeta) or class keywords.

    A metaclass's `__call__` replaces `__init__` as what calling the class
    takes, and `inspect` reads it so. Bases that cannot be read count as
    plain: a metaclass there is rare, and the step's own check still imports.
    """
    if hops > _MAX_HOPS:
        return True
    for keyword in node.keywords:
        try:
            metaclass = _resolve(module, keyword.value, hops + 1) if keyword.arg == "metaclass" else None
        except _Undecided:
            return True
        if not (isinstance(metaclass, _Known) and metaclass.qualname == _PLAIN_METACLASS):
            return True
    for expr in node.bases:
        try:
            base = _base(module, expr, hops)
        except _Undecided:
            continue
        if base is not None and _has_metaclass(base.module, typing.cast(ast.ClassDef, base.node), hops + 1):
            return True
    return False


def _hook(module: _Module, node: ast.ClassDef) -> Callable[[str, Any], None] | None:
    """A `check_config` hook that lives in a module of its own, imported here as a light one.

    `check_config = staticmethod(check_x)` with `from light.module import
    check_x`: that module is imported and the hook runs now. A hook defined in
    the class body needs the class's module (torch): the step's own check
    runs it.
    """
    value = None
    for stmt in node.body:
        bound = _binding_in(stmt, "check_config")
        if bound is not None:
            value = bound.value if isinstance(bound, ast.Assign) else None
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "staticmethod" \
            and len(value.args) == 1:
        value = value.args[0]
    if not isinstance(value, ast.Name) or module.path is None:
        return None
    imported = _top_bindings(module.path).get(value.id)
    if not isinstance(imported, ast.ImportFrom):
        return None
    try:
        hook = getattr(importlib.import_module(_absolute(module, imported.module, imported.level)),
                       imported.names[0].name)
    except Exception:  # whatever stops it here stops the step's own check too, which says why
        return None
    return typing.cast(Callable[[str, Any], None], hook) if callable(hook) else None


def _signature(module: _Module, func: ast.FunctionDef, skip_first: bool) -> inspect.Signature:
    """`inspect.signature` as it would read: a method's `self` left out, annotations as objects."""
    args = func.args
    kinds: list[tuple[ast.arg, Any]] = [(a, inspect.Parameter.POSITIONAL_ONLY) for a in args.posonlyargs]
    kinds += [(a, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in args.args]
    if skip_first:
        if not kinds:
            raise _Undecided  # `def __init__(*args)`
        kinds = kinds[1:]
    if args.vararg is not None:
        kinds.append((args.vararg, inspect.Parameter.VAR_POSITIONAL))
    kinds += [(a, inspect.Parameter.KEYWORD_ONLY) for a in args.kwonlyargs]
    if args.kwarg is not None:
        kinds.append((args.kwarg, inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature([inspect.Parameter(arg.arg, kind, annotation=_annotation(module, arg.annotation, 0))
                              for arg, kind in kinds])


def _annotation(module: _Module, expr: ast.expr | None, hops: int) -> Any:
    """The annotation as `inspect` would give it, as far as judging config scalars needs.

    Scalars, None, `Any` and builtin classes are themselves; `X | Y`, `Union`
    and `Optional` are unions; another class is a stand-in class of its
    name. Everything else (generics, Literal, a name that cannot be followed)
    stays its source text, as `inspect` leaves an annotation it cannot
    evaluate: the judgement reads that as "anything may fit".
    """
    if expr is None:
        return inspect.Parameter.empty
    text = ast.unparse(expr)
    if hops > _MAX_HOPS:
        return text
    if isinstance(expr, ast.Constant):
        if expr.value is None:
            return type(None)
        if isinstance(expr.value, str):  # a string annotation
            try:
                return _annotation(module, ast.parse(expr.value, mode="eval").body, hops + 1)
            except SyntaxError:
                return expr.value
        return text
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):
        return _union([_annotation(module, side, hops + 1) for side in (expr.left, expr.right)])
    try:
        found = _resolve(module, expr.value if isinstance(expr, ast.Subscript) else expr, hops + 1)
    except (_Undecided, SyntaxError, OSError, UnicodeDecodeError):
        return text
    if isinstance(expr, ast.Subscript):
        if not isinstance(found, _Known) or found.qualname not in _UNION_HEADS:
            return text  # a generic: list[int], Literal["a"], Callable[...]
        items = expr.slice.elts if isinstance(expr.slice, ast.Tuple) else [expr.slice]
        members = [_annotation(module, item, hops + 1) for item in items]
        return _union([*members, type(None)] if found.qualname.endswith("Optional") else members)
    if isinstance(found, _Known):
        owner, _, name = found.qualname.rpartition(".")
        if found.qualname in ("typing.Any", "typing_extensions.Any"):
            return Any
        value = getattr(builtins, name, None) if owner == "builtins" else None
        return value if isinstance(value, type) else text
    if isinstance(found, _Def) and isinstance(found.node, ast.ClassDef):
        return _stand_in(found.module.name, found.node.name)
    if isinstance(found, _Alias):
        return _annotation(found.module, found.value, hops + 1)
    return text


def _union(members: list[Any]) -> Any:
    return typing.Union[tuple(members)]  # noqa: UP007 (members are only known at run time)


@functools.cache
def _stand_in(module: str, name: str) -> type:
    """A class no config value is an instance of, standing in for one that is not imported (Tensor)."""
    return type(name, (), {"__module__": module})
