"""The layer rule of docs/decisions/0012-layers.md, checked on the source and in a fresh interpreter.

Two views, because each misses what the other sees: the source view names the file and line of a
forbidden import, including one hidden inside a function; the interpreter view catches a forbidden
module that arrives indirectly (a domain module importing a helper that imports Flask).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ROOT

PACKAGE = ROOT / "gateway"

# What each layer may not import, directly or from inside a function. A name covers its submodules.
DRIVERS = ("psycopg", "redis", "kombu", "celery", "limits")
WEB = ("flask", "flask_wtf", "werkzeug", "jinja2")
TWILIO = ("twilio", "requests")
FORBIDDEN = {
    "domain": (*DRIVERS, *WEB, *TWILIO, "sqlalchemy", "alembic", "prometheus_client",
               "gateway.store", "gateway.services", "gateway.web", "gateway.queue", "gateway.twilio",
               "gateway.bootstrap", "gateway.config", "gateway.metrics", "gateway.logs", "gateway.cli"),
    "services": (*DRIVERS, *WEB, *TWILIO, "sqlalchemy.dialects",
                 "gateway.web", "gateway.queue", "gateway.twilio", "gateway.bootstrap", "gateway.cli"),
    "store": (*WEB, *TWILIO, "celery", "kombu", "gateway.services", "gateway.web", "gateway.queue",
              "gateway.twilio", "gateway.bootstrap", "gateway.cli"),
    "queue": (*WEB, *TWILIO, "gateway.web", "gateway.cli"),
    "web": ("celery", "kombu", "psycopg", "sqlalchemy.dialects", "gateway.cli"),
}
# Deliberate exceptions, each with its reason.
ALLOWED = {
    # Alembic's environment gathers every table the process owns, the sandbox's included.
    ("gateway/store/migrations/env.py", "gateway.twilio.sandbox.models"),
}
# The domain is pure: besides itself, only the standard library and phonenumbers.
DOMAIN_ALLOWED_THIRD_PARTY = ("phonenumbers",)
# Only the store knows which database it talks to.
DIALECT_WORDS = ("postgresql", "sqlite", "psycopg")


def _modules(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, absolute, with the line it is imported on."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from gateway import web` imports gateway.web
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names if module == "gateway"]
    return found


def _covered(module: str, names: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in names)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_what_it_must_not(layer: str) -> None:
    offences = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                for path in _modules(layer) for line, module in _imports(path)
                if _covered(module, FORBIDDEN[layer])
                and (str(path.relative_to(ROOT)), module) not in ALLOWED]
    assert offences == []


def test_the_domain_uses_only_the_standard_library_and_phonenumbers() -> None:
    offences = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                for path in _modules("domain") for line, module in _imports(path)
                if module.split(".")[0] not in sys.stdlib_module_names
                and not _covered(module, ("gateway.domain", *DOMAIN_ALLOWED_THIRD_PARTY))]
    assert offences == []


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants in code, leaving out docstrings (prose may name a database)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


@pytest.mark.parametrize("layer", ["domain", "services", "web"])
def test_only_the_store_knows_the_dialect(layer: str) -> None:
    offences = [f"{path.relative_to(ROOT)}:{line} {value!r}"
                for path in _modules(layer) for line, value in _code_strings(path)
                if any(word in value.lower() for word in DIALECT_WORDS)]
    assert offences == []


def _loaded_after_importing(modules: list[str]) -> list[str]:
    """The modules a fresh interpreter holds after importing `modules` (and nothing else)."""
    script = ("import importlib, json, sys\n"
              f"for name in {modules!r}: importlib.import_module(name)\n"
              "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _package_modules(layer: str) -> list[str]:
    return [".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for path in _modules(layer)]


def test_importing_the_package_loads_nothing() -> None:
    loaded = _loaded_after_importing(["gateway"])
    assert [name for name in loaded if name.startswith("gateway.")] == []
    assert not any(_covered(name, ("flask", "sqlalchemy", "celery", "twilio")) for name in loaded)


def test_importing_the_whole_domain_loads_no_framework_and_no_driver() -> None:
    loaded = _loaded_after_importing(_package_modules("domain"))
    assert [name for name in loaded if _covered(name, FORBIDDEN["domain"])] == []


def test_importing_every_service_loads_no_web_framework_queue_or_twilio() -> None:
    # sqlalchemy arrives with the store, which is allowed; what must not arrive, even indirectly, is
    # what would tie a use case to one adapter.
    loaded = _loaded_after_importing(_package_modules("services"))
    assert [name for name in loaded if _covered(name, (*WEB, *TWILIO, "celery", "kombu", "gateway.web",
                                                      "gateway.queue", "gateway.twilio"))] == []
