"""Image targets: what turns a compiled app and its baked configuration into a bootable image.

Both targets share the app compilation, the rendered configuration and, after the image file, the
disk layout (``disk.py``), the AMI and the stack. A target answers three questions for the build:
which tool versions determine its output, how the app is compiled for it, and how the image is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.config import Settings
from pipeline.erlang import Artifact

if TYPE_CHECKING:
    from pipeline.release import Source


@dataclass(frozen=True)
class BuildContext:
    """Everything an image target needs to make its image inside a build directory."""

    settings: Settings
    build_id: str
    out: Path  # the (temporary) build directory being filled
    app: Artifact  # the release (beam) or the staged project (ling), read-only
    config_dir: Path  # the baked configuration (sys.config, app.vm.args)
    template_context: dict[str, Any]  # what templates/*.j2 are rendered with


class ImageTarget(Protocol):
    name: str

    def tool_versions(self, settings: Settings) -> dict[str, str]:
        """Versions of every tool and package that shapes the output (cheap; builds nothing)."""
        ...

    def input_files(self, settings: Settings) -> dict[str, str]:
        """``{project-relative path: sha256}`` of target-specific inputs (recipes under ami/)."""
        ...

    def compile(self, settings: Settings, source: Source, work: Path) -> Artifact:
        """Compile the app (and its dependencies) for this target in ``work``; what it made may be
        moved elsewhere afterwards (the compile cache), so it must not refer to ``work``."""
        ...

    def build_image(self, ctx: BuildContext) -> dict[str, Any]:
        """Make the image files under ``ctx.out``; return the manifest's ``image`` section."""
        ...


def target_for(settings: Settings) -> ImageTarget:
    if settings.image.target == "ling":
        from pipeline.images.ling import LingTarget

        return LingTarget()
    from pipeline.images.beam import BeamTarget

    return BeamTarget()
