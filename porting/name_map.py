"""The one table from TF-Slim's Inception v3 scopes to PyTorch module names.

Every trainable layer of ``tf_slim.nets.inception_v3`` appears once, with its layer kind; the
kind fixes the variables that live under the scope and how each becomes a PyTorch tensor
(``porting.convert``). The table keeps TF-Slim's name quirks verbatim (Mixed_5c's
``Conv2d_0b_1x1``/``Conv_1_0c_5x5``, Mixed_6a's 3x3 convs named ``*_1x1``, Mixed_7b's
``Conv2d_0b_3x1`` vs Mixed_7c's ``Conv2d_0c_3x1``).
"""
from __future__ import annotations

from dataclasses import dataclass

TF_ROOT = "InceptionV3"

CONV_BN = "conv_bn"  # weights [kh, kw, in, out] + BatchNorm/{beta, moving_mean, moving_variance}
LOGITS = "logits"    # weights [1, 1, in, classes] + biases [classes], no batch norm

# TF-Slim variable name (below the layer scope) for each role of a layer kind.
CONV_BN_VARIABLES = {
    "weight": "weights",
    "beta": "BatchNorm/beta",
    "mean": "BatchNorm/moving_mean",
    "var": "BatchNorm/moving_variance",
}
LOGITS_VARIABLES = {"weight": "weights", "bias": "biases"}

AUX_SCOPE = "AuxLogits"


@dataclass(frozen=True)
class Layer:
    tf_scope: str    # below InceptionV3/, e.g. "Mixed_5c/Branch_1/Conv_1_0c_5x5"
    torch_name: str  # module path in models.InceptionV3, e.g. "Mixed_5c.branch5x5_2"
    kind: str        # CONV_BN or LOGITS

    @property
    def is_aux(self) -> bool:
        return self.tf_scope.startswith(AUX_SCOPE + "/")

    def variables(self) -> dict[str, str]:
        """role -> full TF variable name."""
        roles = CONV_BN_VARIABLES if self.kind == CONV_BN else LOGITS_VARIABLES
        return {role: f"{TF_ROOT}/{self.tf_scope}/{leaf}" for role, leaf in roles.items()}


def _table(kind: str, rows: str) -> list[Layer]:
    """Rows of 'tf_scope  torch_name'; blank lines and '#' comments are ignored."""
    layers = []
    for row in rows.splitlines():
        row = row.split("#", 1)[0].strip()
        if row:
            tf_scope, torch_name = row.split()
            layers.append(Layer(tf_scope, torch_name, kind))
    return layers


LAYERS: tuple[Layer, ...] = tuple(_table(CONV_BN, """
    Conv2d_1a_3x3                       Conv2d_1a_3x3
    Conv2d_2a_3x3                       Conv2d_2a_3x3
    Conv2d_2b_3x3                       Conv2d_2b_3x3
    Conv2d_3b_1x1                       Conv2d_3b_1x1
    Conv2d_4a_3x3                       Conv2d_4a_3x3

    Mixed_5b/Branch_0/Conv2d_0a_1x1     Mixed_5b.branch1x1
    Mixed_5b/Branch_1/Conv2d_0a_1x1     Mixed_5b.branch5x5_1
    Mixed_5b/Branch_1/Conv2d_0b_5x5     Mixed_5b.branch5x5_2
    Mixed_5b/Branch_2/Conv2d_0a_1x1     Mixed_5b.branch3x3dbl_1
    Mixed_5b/Branch_2/Conv2d_0b_3x3     Mixed_5b.branch3x3dbl_2
    Mixed_5b/Branch_2/Conv2d_0c_3x3     Mixed_5b.branch3x3dbl_3
    Mixed_5b/Branch_3/Conv2d_0b_1x1     Mixed_5b.branch_pool

    Mixed_5c/Branch_0/Conv2d_0a_1x1     Mixed_5c.branch1x1
    Mixed_5c/Branch_1/Conv2d_0b_1x1     Mixed_5c.branch5x5_1      # quirk: 0b, not 0a
    Mixed_5c/Branch_1/Conv_1_0c_5x5     Mixed_5c.branch5x5_2      # quirk: Conv_1_0c
    Mixed_5c/Branch_2/Conv2d_0a_1x1     Mixed_5c.branch3x3dbl_1
    Mixed_5c/Branch_2/Conv2d_0b_3x3     Mixed_5c.branch3x3dbl_2
    Mixed_5c/Branch_2/Conv2d_0c_3x3     Mixed_5c.branch3x3dbl_3
    Mixed_5c/Branch_3/Conv2d_0b_1x1     Mixed_5c.branch_pool

    Mixed_5d/Branch_0/Conv2d_0a_1x1     Mixed_5d.branch1x1
    Mixed_5d/Branch_1/Conv2d_0a_1x1     Mixed_5d.branch5x5_1
    Mixed_5d/Branch_1/Conv2d_0b_5x5     Mixed_5d.branch5x5_2
    Mixed_5d/Branch_2/Conv2d_0a_1x1     Mixed_5d.branch3x3dbl_1
    Mixed_5d/Branch_2/Conv2d_0b_3x3     Mixed_5d.branch3x3dbl_2
    Mixed_5d/Branch_2/Conv2d_0c_3x3     Mixed_5d.branch3x3dbl_3
    Mixed_5d/Branch_3/Conv2d_0b_1x1     Mixed_5d.branch_pool

    Mixed_6a/Branch_0/Conv2d_1a_1x1     Mixed_6a.branch3x3        # quirk: a 3x3/2 conv
    Mixed_6a/Branch_1/Conv2d_0a_1x1     Mixed_6a.branch3x3dbl_1
    Mixed_6a/Branch_1/Conv2d_0b_3x3     Mixed_6a.branch3x3dbl_2
    Mixed_6a/Branch_1/Conv2d_1a_1x1     Mixed_6a.branch3x3dbl_3   # quirk: a 3x3/2 conv
""") + [
    layer
    for block in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e")
    for layer in _table(CONV_BN, f"""
    {block}/Branch_0/Conv2d_0a_1x1     {block}.branch1x1
    {block}/Branch_1/Conv2d_0a_1x1     {block}.branch7x7_1
    {block}/Branch_1/Conv2d_0b_1x7     {block}.branch7x7_2
    {block}/Branch_1/Conv2d_0c_7x1     {block}.branch7x7_3
    {block}/Branch_2/Conv2d_0a_1x1     {block}.branch7x7dbl_1
    {block}/Branch_2/Conv2d_0b_7x1     {block}.branch7x7dbl_2
    {block}/Branch_2/Conv2d_0c_1x7     {block}.branch7x7dbl_3
    {block}/Branch_2/Conv2d_0d_7x1     {block}.branch7x7dbl_4
    {block}/Branch_2/Conv2d_0e_1x7     {block}.branch7x7dbl_5
    {block}/Branch_3/Conv2d_0b_1x1     {block}.branch_pool
""")
] + _table(CONV_BN, """
    AuxLogits/Conv2d_1b_1x1             AuxLogits.conv0
    AuxLogits/Conv2d_2a_5x5             AuxLogits.conv1

    Mixed_7a/Branch_0/Conv2d_0a_1x1     Mixed_7a.branch3x3_1
    Mixed_7a/Branch_0/Conv2d_1a_3x3     Mixed_7a.branch3x3_2
    Mixed_7a/Branch_1/Conv2d_0a_1x1     Mixed_7a.branch7x7x3_1
    Mixed_7a/Branch_1/Conv2d_0b_1x7     Mixed_7a.branch7x7x3_2
    Mixed_7a/Branch_1/Conv2d_0c_7x1     Mixed_7a.branch7x7x3_3
    Mixed_7a/Branch_1/Conv2d_1a_3x3     Mixed_7a.branch7x7x3_4

    Mixed_7b/Branch_0/Conv2d_0a_1x1     Mixed_7b.branch1x1
    Mixed_7b/Branch_1/Conv2d_0a_1x1     Mixed_7b.branch3x3_1
    Mixed_7b/Branch_1/Conv2d_0b_1x3     Mixed_7b.branch3x3_2a
    Mixed_7b/Branch_1/Conv2d_0b_3x1     Mixed_7b.branch3x3_2b     # quirk: 0b_3x1 here ...
    Mixed_7b/Branch_2/Conv2d_0a_1x1     Mixed_7b.branch3x3dbl_1
    Mixed_7b/Branch_2/Conv2d_0b_3x3     Mixed_7b.branch3x3dbl_2
    Mixed_7b/Branch_2/Conv2d_0c_1x3     Mixed_7b.branch3x3dbl_3a
    Mixed_7b/Branch_2/Conv2d_0d_3x1     Mixed_7b.branch3x3dbl_3b
    Mixed_7b/Branch_3/Conv2d_0b_1x1     Mixed_7b.branch_pool

    Mixed_7c/Branch_0/Conv2d_0a_1x1     Mixed_7c.branch1x1
    Mixed_7c/Branch_1/Conv2d_0a_1x1     Mixed_7c.branch3x3_1
    Mixed_7c/Branch_1/Conv2d_0b_1x3     Mixed_7c.branch3x3_2a
    Mixed_7c/Branch_1/Conv2d_0c_3x1     Mixed_7c.branch3x3_2b     # ... 0c_3x1 in Mixed_7c
    Mixed_7c/Branch_2/Conv2d_0a_1x1     Mixed_7c.branch3x3dbl_1
    Mixed_7c/Branch_2/Conv2d_0b_3x3     Mixed_7c.branch3x3dbl_2
    Mixed_7c/Branch_2/Conv2d_0c_1x3     Mixed_7c.branch3x3dbl_3a
    Mixed_7c/Branch_2/Conv2d_0d_3x1     Mixed_7c.branch3x3dbl_3b
    Mixed_7c/Branch_3/Conv2d_0b_1x1     Mixed_7c.branch_pool
""") + _table(LOGITS, """
    AuxLogits/Conv2d_2b_1x1             AuxLogits.fc
    Logits/Conv2d_1c_1x1                fc
"""))

# Variables that are not part of the model: reported and skipped, never an error.
NON_MODEL_NAMES = frozenset({"global_step", "beta1_power", "beta2_power"})
# Suffixes of optimizer slots and moving-average shadows that TF trainers add to model variables.
SLOT_SUFFIXES = ("/ExponentialMovingAverage", "/RMSProp", "/RMSProp_1", "/Momentum",
                 "/Adam", "/Adam_1", "/Adagrad", "/Ftrl", "/Ftrl_1")
EMA_SUFFIX = "/ExponentialMovingAverage"


def non_model_reason(name: str) -> str | None:
    """Why a checkpoint variable is not a model weight, or None if it should be one."""
    if name in NON_MODEL_NAMES:
        return "training counter"
    for suffix in SLOT_SUFFIXES:
        if name.endswith(suffix):
            kind = "moving-average shadow" if suffix == EMA_SUFFIX else "optimizer slot"
            return f"{kind} ({suffix[1:]})"
    return None

# The main classifier: its bias fixes the checkpoint's number of classes.
CLASSIFIER = next(layer for layer in LAYERS if layer.tf_scope == "Logits/Conv2d_1c_1x1")
