"""The table: one row per TF-Slim layer, from its variable scope to its PyTorch module."""
from __future__ import annotations

from dataclasses import dataclass

from models.spec.kinds import LayerKind, make_kind

AUX_SCOPE = "AuxLogits"
# TF's name for a variable's tf.train.ExponentialMovingAverage shadow: <variable> + EMA_SUFFIX
EMA_SUFFIX = "/ExponentialMovingAverage"


def with_root(name: str, old: str, new: str) -> str:
    """``name`` moved from root scope ``old`` to ``new`` (``old/Conv2d_1a_3x3/weights`` ->
    ``new/Conv2d_1a_3x3/weights``); a name outside ``old`` (``global_step``) is unchanged. The
    one rule for checkpoints whose root scope was renamed (``Architecture.aliases``): a renamed
    copy differs from the original in its root scope only."""
    head, sep, rest = name.partition("/")
    return f"{new}/{rest}" if sep and head == old else name


@dataclass(frozen=True)
class Layer:
    scope: str          # full TF scope, e.g. "InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5"
    module: str         # PyTorch module path, e.g. "Mixed_5c.branch5x5_2"
    kind: LayerKind
    shape: tuple        # conv: (out, in, kh, kw); classifier: (in,)
    is_aux: bool

    def variables(self) -> dict[str, str]:
        """role -> full TF variable name."""
        return {role: f"{self.scope}/{leaf}" for role, leaf in self.kind.variables.items()}

    def label(self, role: str) -> str:
        """Where a checkpoint variable lands, as reports show it: ``Mixed_5b.branch1x1 (weight)``."""
        return f"{self.module} ({role})"


def table(root: str, rows: str, *, bn_eps: float) -> list[Layer]:
    """Layers from rows of ``tf_scope module kind shape...``, scopes below ``root``.

    Convs give ``KHxKW IN OUT`` (e.g. ``1x7 128 160``), classifiers their input features, batch
    norms their channels. ``bn_eps`` is the architecture's batch-norm epsilon, stated by every
    table (TF-Slim's arg scopes differ: 1e-3 for Inception, 1e-5 for ResNet). A kind is looked
    up in the registry (``models.spec.kinds``). Blank lines and ``#`` comments are ignored.
    """
    made: dict[str, LayerKind] = {}  # one instance per kind for the whole table
    layers = []
    for row in rows.splitlines():
        row = row.split("#", 1)[0].split()
        if not row:
            continue
        scope, module, kind, *dims = row
        if len(dims) == 3:
            kh, kw = map(int, dims[0].split("x"))
            shape = (int(dims[2]), int(dims[1]), kh, kw)
        else:
            (features,) = dims
            shape = (int(features),)
        if kind not in made:
            made[kind] = make_kind(kind, bn_eps)
        layers.append(Layer(f"{root}/{scope}", module, made[kind], shape,
                            scope.startswith(AUX_SCOPE + "/")))
    return layers

