"""TF-Slim Inception-ResNet-v2 as the converter sees it: the one table, end points, eval config.

Scopes as TF-Slim's ``nets/inception_resnet_v2.py`` creates them (the graph that the
adversarially trained ``adv_inception_resnet_v2`` and ``ens_adv_inception_resnet_v2``
checkpoints were saved from, and the 2016 base release): the stem, ``Mixed_5b``, ``slim.repeat``
scopes ``Repeat/block35_1..10``, ``Mixed_6a``, ``Repeat_1/block17_1..20``, ``Mixed_7a``,
``Repeat_2/block8_1..9``, the final ``Block8`` (scale 1.0, no ReLU), ``Conv2d_7b_1x1``, then
``AuxLogits`` and ``Logits``. Each residual block's ``Conv2d_1x1`` "up" conv (beside
``Branch_0/Conv2d_1x1``) has biases and no batch norm. 206 conv+BN layers x 4 variables, 40 up
convs x 2 and two classifiers x 2: 908 model variables.

Module names are timm's ``inception_resnet_v2`` keys (``conv2d_1a``, ``mixed_5b``, ``repeat.N``,
``repeat_1.N``, ``repeat_2.N``, ``block8``, ``conv2d_7b``, ``classif``; branches with several
convs are ``nn.Sequential``s in TF-Slim's order), so a file without the aux head loads into
``timm.create_model("inception_resnet_v2")``; the aux head, which timm lacks, is ``AuxLogits.*``.
"""
from models.spec import (Architecture, KerasAdapter, Tap, Taps, TimmFacts, base_scope,
                         inception_eval, slim_op, table)

BN_EPS = 1e-3  # inception_resnet_v2_arg_scope's batch_norm_epsilon (no gamma: scale=False)
ROOT = "InceptionResnetV2"
BLOCKS = (("Repeat", "block35", "repeat", 10), ("Repeat_1", "block17", "repeat_1", 20),
          ("Repeat_2", "block8", "repeat_2", 9))


def _block35(scope: str, module: str) -> str:
    return f"""
    {scope}/Branch_0/Conv2d_1x1      {module}.branch0     conv_bn   1x1 320 32
    {scope}/Branch_1/Conv2d_0a_1x1   {module}.branch1.0   conv_bn   1x1 320 32
    {scope}/Branch_1/Conv2d_0b_3x3   {module}.branch1.1   conv_bn   3x3 32 32
    {scope}/Branch_2/Conv2d_0a_1x1   {module}.branch2.0   conv_bn   1x1 320 32
    {scope}/Branch_2/Conv2d_0b_3x3   {module}.branch2.1   conv_bn   3x3 32 48
    {scope}/Branch_2/Conv2d_0c_3x3   {module}.branch2.2   conv_bn   3x3 48 64
    {scope}/Conv2d_1x1               {module}.conv2d      conv_bias 1x1 128 320
"""


def _block17(scope: str, module: str) -> str:
    return f"""
    {scope}/Branch_0/Conv2d_1x1      {module}.branch0     conv_bn   1x1 1088 192
    {scope}/Branch_1/Conv2d_0a_1x1   {module}.branch1.0   conv_bn   1x1 1088 128
    {scope}/Branch_1/Conv2d_0b_1x7   {module}.branch1.1   conv_bn   1x7 128 160
    {scope}/Branch_1/Conv2d_0c_7x1   {module}.branch1.2   conv_bn   7x1 160 192
    {scope}/Conv2d_1x1               {module}.conv2d      conv_bias 1x1 384 1088
"""


def _block8(scope: str, module: str) -> str:
    return f"""
    {scope}/Branch_0/Conv2d_1x1      {module}.branch0     conv_bn   1x1 2080 192
    {scope}/Branch_1/Conv2d_0a_1x1   {module}.branch1.0   conv_bn   1x1 2080 192
    {scope}/Branch_1/Conv2d_0b_1x3   {module}.branch1.1   conv_bn   1x3 192 224
    {scope}/Branch_1/Conv2d_0c_3x1   {module}.branch1.2   conv_bn   3x1 224 256
    {scope}/Conv2d_1x1               {module}.conv2d      conv_bias 1x1 448 2080
"""


def _repeat(index: int, block) -> str:
    scope, name, module, count = BLOCKS[index]
    return "".join(block(f"{scope}/{name}_{i + 1}", f"{module}.{i}") for i in range(count))


LAYERS = table(ROOT, bn_eps=BN_EPS, rows="".join([
    """
    Conv2d_1a_3x3                    conv2d_1a            conv_bn   3x3 3 32
    Conv2d_2a_3x3                    conv2d_2a            conv_bn   3x3 32 32
    Conv2d_2b_3x3                    conv2d_2b            conv_bn   3x3 32 64
    Conv2d_3b_1x1                    conv2d_3b            conv_bn   1x1 64 80
    Conv2d_4a_3x3                    conv2d_4a            conv_bn   3x3 80 192

    Mixed_5b/Branch_0/Conv2d_1x1     mixed_5b.branch0     conv_bn   1x1 192 96
    Mixed_5b/Branch_1/Conv2d_0a_1x1  mixed_5b.branch1.0   conv_bn   1x1 192 48
    Mixed_5b/Branch_1/Conv2d_0b_5x5  mixed_5b.branch1.1   conv_bn   5x5 48 64
    Mixed_5b/Branch_2/Conv2d_0a_1x1  mixed_5b.branch2.0   conv_bn   1x1 192 64
    Mixed_5b/Branch_2/Conv2d_0b_3x3  mixed_5b.branch2.1   conv_bn   3x3 64 96
    Mixed_5b/Branch_2/Conv2d_0c_3x3  mixed_5b.branch2.2   conv_bn   3x3 96 96
    Mixed_5b/Branch_3/Conv2d_0b_1x1  mixed_5b.branch3.1   conv_bn   1x1 192 64  # .0: the pool
    """,
    _repeat(0, _block35),
    """
    Mixed_6a/Branch_0/Conv2d_1a_3x3  mixed_6a.branch0     conv_bn   3x3 320 384
    Mixed_6a/Branch_1/Conv2d_0a_1x1  mixed_6a.branch1.0   conv_bn   1x1 320 256
    Mixed_6a/Branch_1/Conv2d_0b_3x3  mixed_6a.branch1.1   conv_bn   3x3 256 256
    Mixed_6a/Branch_1/Conv2d_1a_3x3  mixed_6a.branch1.2   conv_bn   3x3 256 384
    """,
    _repeat(1, _block17),
    """
    Mixed_7a/Branch_0/Conv2d_0a_1x1  mixed_7a.branch0.0   conv_bn   1x1 1088 256
    Mixed_7a/Branch_0/Conv2d_1a_3x3  mixed_7a.branch0.1   conv_bn   3x3 256 384
    Mixed_7a/Branch_1/Conv2d_0a_1x1  mixed_7a.branch1.0   conv_bn   1x1 1088 256
    Mixed_7a/Branch_1/Conv2d_1a_3x3  mixed_7a.branch1.1   conv_bn   3x3 256 288
    Mixed_7a/Branch_2/Conv2d_0a_1x1  mixed_7a.branch2.0   conv_bn   1x1 1088 256
    Mixed_7a/Branch_2/Conv2d_0b_3x3  mixed_7a.branch2.1   conv_bn   3x3 256 288
    Mixed_7a/Branch_2/Conv2d_1a_3x3  mixed_7a.branch2.2   conv_bn   3x3 288 320
    """,
    _repeat(2, _block8),
    _block8("Block8", "block8"),
    """
    Conv2d_7b_1x1                    conv2d_7b            conv_bn   1x1 2080 1536

    AuxLogits/Conv2d_1b_1x1          AuxLogits.conv2d_1b  conv_bn   1x1 1088 128
    AuxLogits/Conv2d_2a_5x5          AuxLogits.conv2d_2a  conv_bn   5x5 128 768
    AuxLogits/Logits                 AuxLogits.classif    fc_classifier 768

    Logits/Logits                    classif              fc_classifier 1536
    """,
]))


def _keras_names() -> dict[str, str]:
    """keras.applications.InceptionResNetV2's named conv layers -> TF-Slim scopes.

    Keras names each residual block ``<block>_<i>`` counting on from the repeats (its final
    ``block8_10`` is TF-Slim's ``Block8``) and the last conv ``conv_7b``; every other conv and
    batch norm is counted (see ``KerasAdapter``)."""
    named = {f"{name}_{i + 1}_conv": f"{scope}/{name}_{i + 1}/Conv2d_1x1"
             for scope, name, _, count in BLOCKS for i in range(count)}
    return {**named, "block8_10_conv": "Block8/Conv2d_1x1", "conv_7b": "Conv2d_7b_1x1"}


STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_3a_3x3", "Conv2d_3b_1x1",
        "Conv2d_4a_3x3", "MaxPool_5a_3x3")
# The grid reductions before each repeat's blocks, and what follows the last block8.
BEFORE = {"Repeat": "Mixed_5b", "Repeat_1": "Mixed_6a", "Repeat_2": "Mixed_7a"}
RESIDUAL_OPS = ("add", "Relu")  # a block's ``net += scale * up``, then its activation
FINAL_BLOCK = "Block8"          # scale 1.0, no activation: its "add" is its output


def _taps() -> Taps:
    """Network order: the stem, then per repeat the reduction before it and each block's sum
    and ReLU (block17_20's ReLU is PreAuxLogits, which the aux head reads), the final Block8's
    sum, Conv2d_7b_1x1, then the heads (end points only: the oracle, Keras, has no TF-Slim
    graph names for them)."""
    scope = base_scope(ROOT)
    taps = [Tap(f"{scope}/{slim_op(name)}", (name,)) for name in STEM]
    for repeat, block, _, count in BLOCKS:
        taps.append(Tap(f"{scope}/{slim_op(BEFORE[repeat])}", (BEFORE[repeat],)))
        for i in range(1, count + 1):
            for op in RESIDUAL_OPS:
                last = (repeat, i, op) == ("Repeat_1", count, "Relu")
                taps.append(Tap(f"{scope}/{repeat}/{block}_{i}/{op}",
                                ("PreAuxLogits",) if last else ()))
        if repeat == "Repeat_1":
            taps.append(Tap(None, ("AuxLogits",)))
    taps += [Tap(f"{scope}/{FINAL_BLOCK}/add", ()),
             Tap(f"{scope}/{slim_op('Conv2d_7b_1x1')}", ("Conv2d_7b_1x1",)),
             Tap(None, ("PreLogitsFlatten",)), Tap(None, ("Logits",))]
    return Taps("inception_resnet_v2", taps)


TAPS = _taps()

SPEC = Architecture(
    name="inception_resnet_v2",
    title="Inception-ResNet-v2",
    tf_root=ROOT,
    layers=tuple(LAYERS),
    end_points=(
        "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_3a_3x3", "Conv2d_3b_1x1",
        "Conv2d_4a_3x3", "MaxPool_5a_3x3", "Mixed_5b", "Mixed_6a", "PreAuxLogits", "Mixed_7a",
        "Conv2d_7b_1x1", "AuxLogits", "PreLogitsFlatten", "Logits",
    ),
    classifier_end_points=("AuxLogits", "PreLogitsFlatten", "Logits"),
    eval=inception_eval(classifier="classif"),
    model="models.inception_resnet_v2.model:InceptionResNetV2",
    oracle="models.inception_resnet_v2.oracle",
    oracle_name="Keras InceptionResNetV2 + TF aux head",
    paper="Szegedy, Ioffe, Vanhoucke, Alemi. Inception-v4, Inception-ResNet and the Impact of "
          "Residual Connections on Learning. arXiv:1602.07261",
    keras=KerasAdapter(application="keras.applications.InceptionResNetV2",
                       named=_keras_names()),
    # timm's pools exclude padding as TF's do: it computes TF's logits with a 1000-class
    # file without the aux head (tests/test_release.py, through a release folder)
    timm=TimmFacts(model="inception_resnet_v2", computes_tf=True, pool_size=(8, 8)),
    taps=TAPS,
    # ens_adv_inception_resnet_v2_rename.ckpt, as attack code passes it around (JHL-HUST/VT)
    aliases=("EnsAdvInceptionResnetV2",),
)
