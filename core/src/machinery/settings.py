"""Settings sections: each setting declared once, in the section that owns it.

A section is a dataclass subclass of :class:`Section` whose fields are declared with :func:`setting`: the
default, the environment names, the YAML keys, whether a live reload may change it, and its check. From
that one declaration :class:`~machinery.config.Config` derives its env and YAML tables, its validation,
:data:`~machinery.config.RELOADABLE_FIELDS` and what ``repr`` may show. The core declares its own sections
this way (the top-level fields, ``tls``, ``sqlite``, ``worker``); a plugin returns its section classes from
the ``machinery_settings()`` hook, as a pytest plugin adds its options in ``pytest_addoption``::

    # machinery_foo/settings.py
    from dataclasses import dataclass
    from typing import Any

    from machinery.settings import Section, at_least, setting


    @dataclass(repr=False)  # Section's repr, which never shows a secret
    class FooSettings(Section):
        name = "foo"  # config.foo, YAML "foo:", env MACHINERY_FOO_<NAME>

        #: Seconds a message stays leased. Env MACHINERY_FOO_LEASE (and FOO_VISIBILITY, Go's name).
        lease: float = setting(30.0, env="FOO_VISIBILITY", reload=True, check=at_least(1, " seconds"))
        client: Any = None  # a plain field: code only, no env or YAML name


    # machinery_foo/plugin.py
    @hookimpl
    def machinery_settings() -> list[type[Section]]:
        from .settings import FooSettings  # settings.py must not import the broker or its client library

        return [FooSettings]

Code reads the section typed with ``FooSettings.of(config)`` (``config.foo`` works too, typed ``Any``).

Environment names: ``go_env`` lists Go Machinery's envconfig names; each is accepted with the Go struct
prefix (``REDIS_REDIS_MAX_IDLE``, the section's ``env_prefix``, which wins) and without it
(``REDIS_MAX_IDLE``). A setting Go never had is read from ``MACHINERY_<SECTION>_<NAME>``. ``env`` adds
further accepted names (after those). YAML keys: ``yaml`` lists them when they differ from the field name
(Go's spelling first, e.g. ``yaml=("max_idle_timeout", "idle_timeout")``).

Types: ``str``, ``int``, ``float``, ``bool``, ``int | None``, ``dict[str, Any]`` (``k:v,k:v`` or JSON in
the environment) and ``list[str]`` (comma-separated in the environment); ``kind="binding_args"`` keeps the
dict's values as strings.
"""

from __future__ import annotations

import json
import math
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, overload

from .errors import ConfigError
from .redact import redact_url

if TYPE_CHECKING:
    from .config import Config

__all__ = [
    "Check",
    "Kind",
    "Section",
    "Spec",
    "above",
    "at_least",
    "between",
    "not_empty",
    "parse_bool",
    "setting",
    "specs_of",
]

T = TypeVar("T")
S = TypeVar("S", bound="Section")

#: How a value is read from text and from YAML, and which Python type it must have.
Kind = Literal["str", "int", "float", "bool", "opt_int", "args", "binding_args", "str_list"]
Path = tuple[str, ...]

_META_KEY = "machinery.setting"

# --------------------------------------------------------------------------------------------------------
# Checks


@dataclass(frozen=True)
class Check:
    """A validation rule: ``ok(value)`` must be true; ``requirement`` says so to a human
    (``"must be >= 0 seconds"``), and is shown after the setting's name and env variable."""

    ok: Callable[[Any], bool]
    requirement: str


def at_least(low: float, meaning: str = "") -> Check:
    """``value >= low``; ``meaning`` follows the number (``" seconds (0 means unlimited)"``)."""
    return Check(lambda v: v >= low, f"must be >= {low:g}{meaning}")


def above(low: float, meaning: str = "") -> Check:
    """``value > low``."""
    return Check(lambda v: v > low, f"must be > {low:g}{meaning}")


def between(low: float, high: float, meaning: str = "") -> Check:
    """``low <= value <= high``."""
    return Check(lambda v: low <= v <= high, f"must be between {low:g} and {high:g}{meaning}")


def not_empty(example: str) -> Check:
    """A non-empty string; ``example`` is a value that would do."""
    return Check(bool, f"must not be empty (e.g. {example})")


# --------------------------------------------------------------------------------------------------------
# Declaring a setting


@dataclass(frozen=True)
class _Declared:
    """What :func:`setting` stores in the dataclass field's metadata."""

    go_env: tuple[str, ...]
    env: tuple[str, ...]
    yaml: tuple[str, ...]
    reload: bool
    check: Check | None
    kind: Kind | None
    secret: bool


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@overload
def setting(
    default: T,
    *,
    go_env: str | Sequence[str] = (),
    env: str | Sequence[str] = (),
    yaml: str | Sequence[str] = (),
    reload: bool = False,
    check: Check | None = None,
    kind: Kind | None = None,
    secret: bool = False,
) -> T: ...


@overload
def setting(
    *,
    factory: Callable[[], T],
    go_env: str | Sequence[str] = (),
    env: str | Sequence[str] = (),
    yaml: str | Sequence[str] = (),
    reload: bool = False,
    check: Check | None = None,
    kind: Kind | None = None,
    secret: bool = False,
) -> T: ...


def setting(
    default: Any = MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    go_env: str | Sequence[str] = (),
    env: str | Sequence[str] = (),
    yaml: str | Sequence[str] = (),
    reload: bool = False,
    check: Check | None = None,
    kind: Kind | None = None,
    secret: bool = False,
) -> Any:
    """One setting of a :class:`Section` (or of ``Config`` itself): a dataclass field carrying its
    environment names, YAML keys, reload safety and check.

    - ``default`` (or ``factory`` for a mutable default such as a dict);
    - ``go_env``: Go Machinery's envconfig names, accepted with and without the section's ``env_prefix``;
      without ``go_env`` the name is ``MACHINERY_<SECTION>_<NAME>`` (``MACHINERY_<NAME>`` at the top level);
    - ``env``: more accepted names, after those (e.g. ``TLS_CA_FILE``);
    - ``yaml``: the YAML keys when they are not just the field name (Go's spelling first);
    - ``reload``: a live reload may change it (readers must read it each time they use it);
    - ``check``: a :class:`Check` such as :func:`at_least` (the type is always checked);
    - ``kind``: only for ``"binding_args"`` (a dict whose env values stay strings);
    - ``secret``: never shown (names with password/secret/token... are secret anyway).
    """
    declared = _Declared(_names(go_env), _names(env), _names(yaml), reload, check, kind, secret)
    metadata = {_META_KEY: declared}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    if default is MISSING:
        raise TypeError("setting() needs a default (or factory=...)")
    return field(default=default, metadata=metadata)


# --------------------------------------------------------------------------------------------------------
# Sections


class Section:
    """Base of a settings section (``config.tls``, ``config.redis``...). Subclasses are dataclasses
    declared with ``@dataclass(repr=False)`` (this ``repr`` never shows a secret) and set ``name``."""

    #: The attribute on Config, the YAML mapping's key and the ``MACHINERY_<NAME>_`` env prefix.
    name: ClassVar[str] = ""
    #: Go's envconfig struct prefix (``REDIS`` gives ``REDIS_REDIS_MAX_IDLE``); the upper-case name if empty.
    env_prefix: ClassVar[str] = ""

    def __repr__(self) -> str:
        return safe_repr(self)

    @classmethod
    def of(cls: type[S], config: Config) -> S:
        """This section of ``config``, typed (``RedisSettings.of(config).lease``)."""
        section = getattr(config, cls.name)
        if not isinstance(section, cls):
            raise ConfigError(
                f"config.{cls.name} is a {type(section).__qualname__}, expected a {cls.__qualname__} "
                f"(from {cls.__module__})"
            )
        return section

    @classmethod
    def specs(cls) -> tuple[Spec, ...]:
        """The declared settings of this section, in field order."""
        return specs_of(cls)

    def problems(self, valid: AbstractSet[str]) -> Iterable[str]:
        """Problems that involve several settings (one text each, naming the settings and the fix).

        ``valid`` holds the names of the settings that passed their own type and check; look only at
        those. The default has none.
        """
        return ()

    def with_query(
        self: S, options: Mapping[str, str], url: str, *, values: Mapping[str, Any] | None = None
    ) -> S:
        """A copy of this section with a URL's query ``options`` applied (``?lease=2&create_missing=no``),
        each read from text as its environment variable is and checked as the config checks it, then the
        checks across settings (:meth:`problems`). ``values`` are ready Python values applied the same
        way (a ``from_url(url, config, lease=2)`` keyword); plain fields such as ``client`` are allowed
        there. An empty numeric option keeps the section's value.

        An unknown option or a bad value raises :class:`~machinery.errors.ConfigError` naming the option,
        its value (masked for secrets) and ``url`` (redacted: never its password). Returns ``self`` when
        nothing changes. Override :meth:`parse_option` to accept more text forms for a setting.
        """
        where = f"URL {redact_url(url)!r}"
        specs = {spec.name: spec for spec in self.specs()}
        changes: dict[str, Any] = {}
        for name, text in options.items():
            spec = specs.get(name)
            if spec is None:
                raise ConfigError(
                    f"{where}: unknown option {name!r} (no {self.name} setting has that name); "
                    f"known options: {', '.join(specs)}"
                )
            shown = "'***'" if spec.secret or is_secret_name(name) else repr(text)
            try:
                value = self.parse_option(spec, text)
            except (ValueError, ConfigError):
                raise ConfigError(
                    f"{where}: option {name}={shown} is not {_QUERY_FORMS[spec.kind]}"
                ) from None
            problem = spec.type_problem(value) or spec.check_problem(value)
            if problem:
                raise ConfigError(f"{where}: option {name}={shown}: {problem}")
            changes[name] = value
        plain_fields = {f.name for f in fields(self)}  # type: ignore[arg-type]
        for name, value in (values or {}).items():
            spec = specs.get(name)
            if spec is None and name not in plain_fields:
                raise ConfigError(
                    f"{where}: unknown {self.name} setting {name!r}; known: {', '.join(sorted(plain_fields))}"
                )
            problem = spec.type_problem(value) or spec.check_problem(value) if spec is not None else None
            if problem:
                raise ConfigError(f"{where}: {problem}")
            changes[name] = value
        if not changes:
            return self
        updated = replace(self, **changes)  # type: ignore[type-var]
        problems = list(updated.problems(frozenset(specs)))
        if problems:
            raise ConfigError(f"{where}: " + "; ".join(problems))
        return updated

    def parse_option(self, spec: Spec, text: str) -> Any:
        """The value of URL query option ``spec.name`` given as ``text`` (read as its environment
        variable is; empty numbers keep the current value). Raise ValueError for text that is not
        valid. A section overrides it to accept more forms (memcache's ``max_item_size=2m``)."""
        is_set, value = spec.from_env(spec.name, text)
        return value if is_set else getattr(self, spec.name)


# --------------------------------------------------------------------------------------------------------
# The derived table rows


_ENV_FORMS: dict[Kind, str] = {
    "str": "text",
    "int": "a whole number, e.g. 3600",
    "float": "a number, e.g. 30 or 2.5",
    "bool": "true/false, 1/0 or yes/no",
    "opt_int": "a whole number, or empty for the queue's own setting",
    "args": "k:v,k:v (e.g. x-max-priority:10) or a JSON object",
    "binding_args": "k:v,k:v (e.g. image-type:png,x-match:any) or a JSON object",
    "str_list": "comma-separated text, e.g. first,second",
}


#: What a URL query option of each kind must look like (``with_query``'s errors).
_QUERY_FORMS: dict[Kind, str] = {
    "str": "text",
    "int": "a whole number",
    "float": "a number",
    "bool": "a boolean (true/false, 1/0, yes/no, on/off)",
    "opt_int": "a whole number (or empty)",
    "args": "k:v,k:v or a JSON object",
    "binding_args": "k:v,k:v or a JSON object",
    "str_list": "comma-separated text",
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str_dict(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


_TYPE_CHECKS: dict[Kind, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (_is_int, "an int"),
    "float": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
        "a finite number",
    ),
    "bool": (lambda v: isinstance(v, bool), "a bool"),
    "opt_int": (lambda v: v is None or _is_int(v), "an int or None"),
    "args": (_is_str_dict, "a dict with str keys"),
    "binding_args": (_is_str_dict, "a dict with str keys"),
    "str_list": (lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v), "a list of strings"),
}


@dataclass(frozen=True)
class Spec:
    """One declared setting, as the loaders and the validation see it."""

    section: str  #: "" for a top-level field
    name: str
    kind: Kind
    env: tuple[str, ...]
    yaml: tuple[str, ...]
    reload: bool = False
    check: Check | None = None
    secret: bool = False

    @property
    def path(self) -> Path:
        return (self.section, self.name) if self.section else (self.name,)

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def label(self) -> str:
        """``redis.idle_timeout (YAML redis.max_idle_timeout, env REDIS_IDLE_TIMEOUT)``."""
        yaml_key = f"{self.section}.{self.yaml[0]}" if self.section else self.yaml[0]
        env = min(self.env, key=len)
        hint = f"env {env}" if yaml_key == self.dotted else f"YAML {yaml_key}, env {env}"
        return f"{self.dotted} ({hint})"

    # ---- checking ----

    def type_problem(self, value: Any) -> str | None:
        """The problem with ``value``'s type, or None."""
        ok, expected = _TYPE_CHECKS[self.kind]
        if ok(value):
            return None
        return f"{self.label} must be {expected}; got {self.shown(value)} ({type_name(value)})"

    def check_problem(self, value: Any) -> str | None:
        """The problem with a well-typed ``value`` by the declared check, or None."""
        if self.check is None or self.check.ok(value):
            return None
        return f"{self.label} {self.check.requirement}; got {self.shown(value)}"

    def shown(self, value: Any) -> str:
        """``value`` for an error message: secrets masked whatever their type, long values cut."""
        if self.secret or is_secret_name(self.name):
            return "'***'"
        text = repr(safe_value(self.name, value))
        return text if len(text) <= 80 else text[:77] + "..."

    # ---- reading ----

    def from_env(self, name: str, raw: str) -> tuple[bool, Any]:
        """``(is_set, value)`` for env var ``name``; an empty number/boolean is "not set"."""
        if self.kind == "str":
            return True, raw
        if self.kind == "str_list":
            return True, [item.strip() for item in raw.split(",") if item.strip()]
        text = raw.strip()

        def fail(extra: str = "") -> ConfigError:
            shown = "'***'" if self.secret or is_secret_name(self.name) else repr(raw)
            return ConfigError(
                f"Environment variable {name}={shown} is not valid{extra}: expected {_ENV_FORMS[self.kind]}"
            )

        if self.kind in ("args", "binding_args"):
            return True, _parse_args(text, coerce=self.kind == "args", fail=fail)
        if not text:
            return (True, None) if self.kind == "opt_int" else (False, None)
        if self.kind == "bool":
            try:
                return True, parse_bool(text)
            except ValueError:
                raise fail() from None
        if self.kind in ("int", "opt_int"):
            if not _INT_RE.fullmatch(text):
                raise fail()
            return True, int(text)
        if not _FLOAT_RE.fullmatch(text):
            raise fail()
        return True, float(text)

    def from_yaml(self, value: Any, where: str, source: str) -> Any:
        """A YAML value converted to this setting's type; raises naming the key ``where``."""
        kind = self.kind
        if kind in ("args", "binding_args"):
            if value is None:
                return {}
            if isinstance(value, dict):
                return {str(k): v for k, v in value.items()}
            expected = "a mapping, e.g. {x-max-priority: 10}"
        elif kind == "str_list":
            if value is None:
                return []
            if isinstance(value, str):
                return [value]
            if isinstance(value, list) and all(isinstance(i, str) for i in value):
                return list(value)
            expected = "a list of strings"
        elif kind == "str":
            if isinstance(value, str):
                return value
            if _is_int(value):
                return str(value)
            expected = "a string"
        elif kind == "bool":
            if isinstance(value, bool):
                return value
            expected = "true or false"
        elif kind in ("int", "opt_int"):
            if kind == "opt_int" and value is None:
                return None
            if _is_int(value):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            expected = "a whole number" + (" or null" if kind == "opt_int" else "")
        else:  # float
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                return float(value)
            expected = "a number"
        raise ConfigError(
            f"{source}: {where} must be {expected}, got {self.shown(value)} ({type_name(value)})"
        )


def _kind_of(hint: Any, declared: Kind | None, where: str) -> Kind:
    if declared is not None:
        return declared
    simple: dict[Any, Kind] = {str: "str", int: "int", float: "float", bool: "bool"}
    if hint in simple:
        return simple[hint]
    if hint == int | None or hint == typing.Optional[int]:  # noqa: UP045 - both spellings resolve
        return "opt_int"
    if typing.get_origin(hint) is dict:
        return "args"
    if hint == list[str]:
        return "str_list"
    raise TypeError(
        f"setting {where}: type {hint!r} is not supported "
        "(str, int, float, bool, int | None, dict[str, Any], list[str])"
    )


_SPECS_CACHE: dict[type, tuple[Spec, ...]] = {}


def specs_of(cls: type) -> tuple[Spec, ...]:
    """The :class:`Spec` rows of a section class (or of Config: ``name`` "", no env prefix)."""
    cached = _SPECS_CACHE.get(cls)
    if cached is None:
        cached = _SPECS_CACHE[cls] = _derive_specs(cls)
    return cached


def _derive_specs(cls: type) -> tuple[Spec, ...]:
    if not is_dataclass(cls):
        raise TypeError(
            f"{cls.__qualname__} must be a dataclass (@dataclass(repr=False)) to declare settings"
        )
    section = getattr(cls, "name", "") if issubclass(cls, Section) else ""
    prefix = (getattr(cls, "env_prefix", "") or section.upper()) if section else ""
    hints = typing.get_type_hints(cls)
    rows: list[Spec] = []
    for f in fields(cls):
        declared = f.metadata.get(_META_KEY)
        if declared is None:
            continue  # a plain field (a client object...): code only
        where = f"{section}.{f.name}" if section else f.name
        env: list[str] = []
        for tag in declared.go_env:
            env.extend((f"{prefix}_{tag}", tag) if prefix else (tag,))
        if not declared.go_env:
            env.append(f"MACHINERY_{section}_{f.name}".upper() if section else f"MACHINERY_{f.name}".upper())
        env.extend(n for n in declared.env if n not in env)
        rows.append(
            Spec(
                section=section,
                name=f.name,
                kind=_kind_of(hints[f.name], declared.kind, where),
                env=tuple(env),
                yaml=declared.yaml or (f.name,),
                reload=declared.reload,
                check=declared.check,
                secret=declared.secret,
            )
        )
    return tuple(rows)


# --------------------------------------------------------------------------------------------------------
# Text forms

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def parse_bool(text: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``t/f``, ``y/n``, ``on/off``, any case; raises ValueError."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false, 1/0, yes/no, on/off)")


def _parse_args(text: str, *, coerce: bool, fail: Callable[..., ConfigError]) -> dict[str, Any]:
    if not text:
        return {}
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise fail(f" (bad JSON: {exc})") from None
        if not isinstance(obj, dict):
            raise fail(" (JSON must be an object)")
        return obj
    out: dict[str, Any] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise fail(f" (item {item!r} has no 'key:value')")
        value = value.strip()
        out[key.strip()] = _scalar(value) if coerce else value
    return out


def _scalar(text: str) -> Any:
    """``"10"`` → 10, ``"0.5"`` → 0.5, ``"true"`` → True; anything else stays a string."""
    if _INT_RE.fullmatch(text):
        return int(text)
    if _FLOAT_RE.fullmatch(text):
        number = float(text)
        return number if math.isfinite(number) else text
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# --------------------------------------------------------------------------------------------------------
# Safe display (repr, redacted(), log lines)

_SECRET_FIELD_RE = re.compile(r"password|passwd|secret|token|credential|api_key|access_key", re.IGNORECASE)
_URL_FIELDS = frozenset({"broker", "result_backend", "lock"})


def is_secret_name(name: str) -> bool:
    """True for a field whose name says it holds a secret (``sentinel_password``, ``api_token``...)."""
    return bool(_SECRET_FIELD_RE.search(name))


class Opaque:
    """Shows as its text, unquoted, in a ``repr`` (used for client objects)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def safe_value(name: str, value: Any, secret: bool = False) -> Any:
    """What may be shown for field ``name``: URLs redacted, secrets masked, clients reduced to their type."""
    if name == "client" or name.endswith("_client"):
        if value is None:
            return None
        kind = type(value)
        return Opaque(f"<{kind.__module__}.{kind.__qualname__}>")
    if (secret or is_secret_name(name)) and not isinstance(value, str):
        return "***" if value else value  # a list of keys, a token object...: never shown, even in part
    if isinstance(value, str):
        if secret or is_secret_name(name):
            return "***" if value else ""
        if name in _URL_FIELDS or name.endswith(("_url", "_uri")) or "://" in value or "@" in value:
            return redact_url(value)
    return value


def _secret_names(obj: Any) -> frozenset[str]:
    try:
        return frozenset(spec.name for spec in specs_of(type(obj)) if spec.secret)
    except TypeError:
        return frozenset()


def safe_items(obj: Any) -> list[tuple[str, Any]]:
    """``(name, shown value)`` for each ``repr``-able field of a dataclass, secrets hidden."""
    secret = _secret_names(obj)
    return [
        (f.name, safe_value(f.name, getattr(obj, f.name), f.name in secret)) for f in fields(obj) if f.repr
    ]


def safe_repr(obj: Any) -> str:
    """``Name(field=value, ...)`` with URLs redacted, secrets masked and clients shown by type."""
    parts = ", ".join(f"{name}={value!r}" for name, value in safe_items(obj))
    return f"{type(obj).__name__}({parts})"


def plain(value: Any) -> Any:
    """An :class:`Opaque` as its text, anything else as is (for ``redacted()`` dicts)."""
    return repr(value) if isinstance(value, Opaque) else value


def check_section_class(cls: Any) -> type[Section]:
    """``cls`` if it can serve as a settings section, else a TypeError saying what to fix."""
    where = getattr(cls, "__qualname__", repr(cls))
    if not (isinstance(cls, type) and issubclass(cls, Section)):
        raise TypeError(f"{where} is not a machinery.settings.Section subclass")
    params: Any = vars(cls).get("__dataclass_params__")  # its own decorator, not a parent's
    if params is None:
        raise TypeError(f"{where} must be declared with @dataclass(repr=False)")
    if params.repr:
        raise TypeError(f"{where}: declare it with @dataclass(repr=False), so its repr never shows a secret")
    if not cls.name.isidentifier() or cls.name.startswith("_"):
        raise TypeError(f"{where}.name must be a Python identifier not starting with '_', got {cls.name!r}")
    specs_of(cls)  # types and names are checked here
    return cls
