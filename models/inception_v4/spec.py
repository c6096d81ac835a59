"""TF-Slim Inception v4 as the converter sees it: the one table, end points, eval config, releases.

Scopes as tensorflow/models ``research/slim/nets/inception_v4.py`` creates them (the graph the
2016-09-09 release was saved from; tf_slim's pip package does not ship this net): root
``InceptionV4``; the stem ``Conv2d_1a_3x3``, ``Conv2d_2a_3x3``, ``Conv2d_2b_3x3``; ``Mixed_3a``
(max pool | 3x3/2 conv), ``Mixed_4a``, ``Mixed_5a`` (3x3/2 conv | max pool); 4 Inception-A blocks
``Mixed_5b``..``5e``, Reduction-A ``Mixed_6a``, 7 Inception-B ``Mixed_6b``..``6h``, Reduction-B
``Mixed_7a``, 3 Inception-C ``Mixed_7b``..``7d``; ``AuxLogits`` on ``Mixed_6h`` (``Conv2d_1b_1x1``,
``Conv2d_2a`` whose kernel is the pooled map's size, 5x5 at 299 px, and the fully connected
``Aux_logits``); ``Logits/Logits`` fully connected. Every conv has a batch norm without gamma
(``inception_utils.inception_arg_scope``: eps 1e-3, ``scale=False``): 151 conv layers (2 of them
in the aux head) x 4 variables and two classifiers x 2, 608 model variables.

Module names are timm's ``inception_v4`` keys: ``features.0``..``features.21`` are the 22 end
points from ``Conv2d_1a_3x3`` to ``Mixed_7d`` in order (a block's branches are timm's
``branch0``.., ``nn.Sequential``s in TF-Slim's order; the average pool is ``branch3.0``), the
classifier ``last_linear``; so a file without the aux head loads into
``timm.create_model("inception_v4")`` as it is. The aux head, which timm lacks, is
``AuxLogits.*``, between ``features`` and ``last_linear`` in the state dict.
"""
from models.spec import Architecture, TimmFacts, inception_eval, inception_taps, table

BN_EPS = 1e-3  # inception_utils.inception_arg_scope's batch_norm_epsilon (no gamma: scale=False)
ROOT = "InceptionV4"

# TF-Slim's end points of the base net, in order: features.0 .. features.21
FEATURE_END_POINTS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Mixed_3a", "Mixed_4a", "Mixed_5a",
    *(f"Mixed_5{c}" for c in "bcde"), "Mixed_6a", *(f"Mixed_6{c}" for c in "bcdefgh"),
    "Mixed_7a", *(f"Mixed_7{c}" for c in "bcd"),
)
AUX_INPUT = "Mixed_6h"  # the end point the aux head reads


def _module(block: str) -> str:
    return f"features.{FEATURE_END_POINTS.index(block)}"


def _inception_a(block: str) -> str:
    m = _module(block)
    return f"""
    {block}/Branch_0/Conv2d_0a_1x1   {m}.branch0     conv_bn  1x1 384 96
    {block}/Branch_1/Conv2d_0a_1x1   {m}.branch1.0   conv_bn  1x1 384 64
    {block}/Branch_1/Conv2d_0b_3x3   {m}.branch1.1   conv_bn  3x3 64 96
    {block}/Branch_2/Conv2d_0a_1x1   {m}.branch2.0   conv_bn  1x1 384 64
    {block}/Branch_2/Conv2d_0b_3x3   {m}.branch2.1   conv_bn  3x3 64 96
    {block}/Branch_2/Conv2d_0c_3x3   {m}.branch2.2   conv_bn  3x3 96 96
    {block}/Branch_3/Conv2d_0b_1x1   {m}.branch3.1   conv_bn  1x1 384 96   # .0: the pool
"""


def _inception_b(block: str) -> str:
    m = _module(block)
    return f"""
    {block}/Branch_0/Conv2d_0a_1x1   {m}.branch0     conv_bn  1x1 1024 384
    {block}/Branch_1/Conv2d_0a_1x1   {m}.branch1.0   conv_bn  1x1 1024 192
    {block}/Branch_1/Conv2d_0b_1x7   {m}.branch1.1   conv_bn  1x7 192 224
    {block}/Branch_1/Conv2d_0c_7x1   {m}.branch1.2   conv_bn  7x1 224 256
    {block}/Branch_2/Conv2d_0a_1x1   {m}.branch2.0   conv_bn  1x1 1024 192
    {block}/Branch_2/Conv2d_0b_7x1   {m}.branch2.1   conv_bn  7x1 192 192
    {block}/Branch_2/Conv2d_0c_1x7   {m}.branch2.2   conv_bn  1x7 192 224
    {block}/Branch_2/Conv2d_0d_7x1   {m}.branch2.3   conv_bn  7x1 224 224
    {block}/Branch_2/Conv2d_0e_1x7   {m}.branch2.4   conv_bn  1x7 224 256
    {block}/Branch_3/Conv2d_0b_1x1   {m}.branch3.1   conv_bn  1x1 1024 128
"""


def _inception_c(block: str) -> str:
    m = _module(block)  # the 1x3 | 3x1 pairs are concatenated, timm's branch*_*a / *_*b
    return f"""
    {block}/Branch_0/Conv2d_0a_1x1   {m}.branch0     conv_bn  1x1 1536 256
    {block}/Branch_1/Conv2d_0a_1x1   {m}.branch1_0   conv_bn  1x1 1536 384
    {block}/Branch_1/Conv2d_0b_1x3   {m}.branch1_1a  conv_bn  1x3 384 256
    {block}/Branch_1/Conv2d_0c_3x1   {m}.branch1_1b  conv_bn  3x1 384 256
    {block}/Branch_2/Conv2d_0a_1x1   {m}.branch2_0   conv_bn  1x1 1536 384
    {block}/Branch_2/Conv2d_0b_3x1   {m}.branch2_1   conv_bn  3x1 384 448
    {block}/Branch_2/Conv2d_0c_1x3   {m}.branch2_2   conv_bn  1x3 448 512
    {block}/Branch_2/Conv2d_0d_1x3   {m}.branch2_3a  conv_bn  1x3 512 256
    {block}/Branch_2/Conv2d_0e_3x1   {m}.branch2_3b  conv_bn  3x1 512 256
    {block}/Branch_3/Conv2d_0b_1x1   {m}.branch3.1   conv_bn  1x1 1536 256
"""


LAYERS = table(ROOT, bn_eps=BN_EPS, rows="".join([
    """
    Conv2d_1a_3x3                    features.0            conv_bn  3x3 3 32
    Conv2d_2a_3x3                    features.1            conv_bn  3x3 32 32
    Conv2d_2b_3x3                    features.2            conv_bn  3x3 32 64
    Mixed_3a/Branch_1/Conv2d_0a_3x3  features.3.conv       conv_bn  3x3 64 96    # Branch_0: pool
    Mixed_4a/Branch_0/Conv2d_0a_1x1  features.4.branch0.0  conv_bn  1x1 160 64
    Mixed_4a/Branch_0/Conv2d_1a_3x3  features.4.branch0.1  conv_bn  3x3 64 96
    Mixed_4a/Branch_1/Conv2d_0a_1x1  features.4.branch1.0  conv_bn  1x1 160 64
    Mixed_4a/Branch_1/Conv2d_0b_1x7  features.4.branch1.1  conv_bn  1x7 64 64
    Mixed_4a/Branch_1/Conv2d_0c_7x1  features.4.branch1.2  conv_bn  7x1 64 64
    Mixed_4a/Branch_1/Conv2d_1a_3x3  features.4.branch1.3  conv_bn  3x3 64 96
    Mixed_5a/Branch_0/Conv2d_1a_3x3  features.5.conv       conv_bn  3x3 192 192  # Branch_1: pool
    """,
    *(_inception_a(f"Mixed_5{c}") for c in "bcde"),
    """
    Mixed_6a/Branch_0/Conv2d_1a_3x3  features.10.branch0   conv_bn  3x3 384 384
    Mixed_6a/Branch_1/Conv2d_0a_1x1  features.10.branch1.0 conv_bn  1x1 384 192
    Mixed_6a/Branch_1/Conv2d_0b_3x3  features.10.branch1.1 conv_bn  3x3 192 224
    Mixed_6a/Branch_1/Conv2d_1a_3x3  features.10.branch1.2 conv_bn  3x3 224 256
    """,
    *(_inception_b(f"Mixed_6{c}") for c in "bcdefgh"),
    """
    Mixed_7a/Branch_0/Conv2d_0a_1x1  features.18.branch0.0 conv_bn  1x1 1024 192
    Mixed_7a/Branch_0/Conv2d_1a_3x3  features.18.branch0.1 conv_bn  3x3 192 192
    Mixed_7a/Branch_1/Conv2d_0a_1x1  features.18.branch1.0 conv_bn  1x1 1024 256
    Mixed_7a/Branch_1/Conv2d_0b_1x7  features.18.branch1.1 conv_bn  1x7 256 256
    Mixed_7a/Branch_1/Conv2d_0c_7x1  features.18.branch1.2 conv_bn  7x1 256 320
    Mixed_7a/Branch_1/Conv2d_1a_3x3  features.18.branch1.3 conv_bn  3x3 320 320
    """,
    *(_inception_c(f"Mixed_7{c}") for c in "bcd"),
    """
    AuxLogits/Conv2d_1b_1x1          AuxLogits.conv2d_1b   conv_bn  1x1 1024 128
    AuxLogits/Conv2d_2a              AuxLogits.conv2d_2a   conv_bn  5x5 128 768  # kernel: the map
    AuxLogits/Aux_logits             AuxLogits.last_linear fc_classifier 768

    Logits/Logits                    last_linear           fc_classifier 1536
    """,
]))

# The heads' tensors in research/slim's graph, below the root (the trunk's follow ``slim_op``)
HEADS = {"AuxLogits": "AuxLogits/Aux_logits/BiasAdd",
         "PreLogitsFlatten": "Logits/PreLogitsFlatten/flatten/Reshape",
         "Logits": "Logits/Logits/BiasAdd"}
_ORDER = list(FEATURE_END_POINTS)  # network order: the aux head after the block it reads
_ORDER[_ORDER.index(AUX_INPUT) + 1:_ORDER.index(AUX_INPUT) + 1] = ["AuxLogits"]
TAPS = inception_taps("inception_v4", ROOT, [*_ORDER, "PreLogitsFlatten", "Logits"], heads=HEADS)

SPEC = Architecture(
    name="inception_v4",
    title="Inception v4",
    tf_root=ROOT,
    layers=tuple(LAYERS),
    end_points=(*FEATURE_END_POINTS, "AuxLogits", "PreLogitsFlatten", "Logits"),
    classifier_end_points=("AuxLogits", "PreLogitsFlatten", "Logits"),
    eval=inception_eval(classifier="last_linear"),
    model="models.inception_v4.model:InceptionV4",
    oracle="models.inception_v4.oracle",
    oracle_name="TF graph of research/slim's inception_v4 (tf_slim layers)",
    paper="Szegedy, Ioffe, Vanhoucke, Alemi. Inception-v4, Inception-ResNet and the Impact of "
          "Residual Connections on Learning. arXiv:1602.07261",
    # timm computes TF's logits with a 1000-class file without the aux head
    # (tests/test_inception_v4.py, loaded as it is and through a release folder)
    timm=TimmFacts(model="inception_v4", computes_tf=True, pool_size=(8, 8)),
    taps=TAPS,
)
