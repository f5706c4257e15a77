"""Where blueprint files live (the shipped ones, found by name) and how errors name a file."""

from __future__ import annotations

from pathlib import Path


def blueprint_dirs() -> tuple[Path, ...]:
    """Where shipped blueprints live: inside the wheel, or the repository's blueprints/."""
    package = Path(__file__).resolve().parent.parent
    return tuple(d for d in (package / "blueprints", package.parent / "blueprints") if d.is_dir())


def builtin_blueprints() -> dict[str, Path]:
    """Shipped blueprints by name (``gpt`` for blueprints/gpt.yaml); fragments excluded."""
    found: dict[str, Path] = {}
    for folder in blueprint_dirs():
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def find_blueprint(name_or_path: str | Path) -> Path:
    """A file path as given, or the shipped blueprint of that name."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    shipped = builtin_blueprints()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    return path


def display_path(path: Path, shipped_dirs: tuple[Path, ...] = ()) -> str:
    """How errors name a file: relative to the working directory, or ``blueprints/...`` for
    a shipped one, else absolute."""
    path = path.resolve()
    for base, prefix in ((Path.cwd(), ""), *((d.resolve(), "blueprints/") for d in shipped_dirs)):
        try:
            return prefix + str(path.relative_to(base))
        except ValueError:
            continue
    return str(path)
