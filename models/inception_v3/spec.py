"""TF-Slim Inception v3 as the converter sees it: the one table, end points, eval config.

Every trainable layer of ``tf_slim.nets.inception_v3`` appears once, in the PyTorch model's
state-dict order, with its layer kind (``models.spec``) and shape (kernel, in, out channels).
The table keeps TF-Slim's name quirks verbatim (Mixed_5c's ``Conv2d_0b_1x1``/``Conv_1_0c_5x5``,
Mixed_6a's 3x3 convs named ``*_1x1``, Mixed_7b's ``Conv2d_0b_3x1`` vs Mixed_7c's
``Conv2d_0c_3x1``). Module names are timm's and torchvision's ``inception_v3`` keys.
"""
from models.spec import Architecture, KerasAdapter, TimmFacts, inception_eval, inception_taps, table

BN_EPS = 1e-3  # inception_v3_arg_scope's batch_norm_epsilon (no gamma: scale=False)
ROOT = "InceptionV3"


def _inception_a(block: str, in_chs: int, pool_chs: int, branch1: tuple[str, str]) -> str:
    first, second = branch1  # Mixed_5c names its 5x5 branch differently
    return f"""
    {block}/Branch_0/Conv2d_0a_1x1   {block}.branch1x1        conv_bn  1x1 {in_chs} 64
    {block}/Branch_1/{first}         {block}.branch5x5_1      conv_bn  1x1 {in_chs} 48
    {block}/Branch_1/{second}        {block}.branch5x5_2      conv_bn  5x5 48 64
    {block}/Branch_2/Conv2d_0a_1x1   {block}.branch3x3dbl_1   conv_bn  1x1 {in_chs} 64
    {block}/Branch_2/Conv2d_0b_3x3   {block}.branch3x3dbl_2   conv_bn  3x3 64 96
    {block}/Branch_2/Conv2d_0c_3x3   {block}.branch3x3dbl_3   conv_bn  3x3 96 96
    {block}/Branch_3/Conv2d_0b_1x1   {block}.branch_pool      conv_bn  1x1 {in_chs} {pool_chs}
"""


def _inception_c(block: str, c7: int) -> str:
    return f"""
    {block}/Branch_0/Conv2d_0a_1x1   {block}.branch1x1        conv_bn  1x1 768 192
    {block}/Branch_1/Conv2d_0a_1x1   {block}.branch7x7_1      conv_bn  1x1 768 {c7}
    {block}/Branch_1/Conv2d_0b_1x7   {block}.branch7x7_2      conv_bn  1x7 {c7} {c7}
    {block}/Branch_1/Conv2d_0c_7x1   {block}.branch7x7_3      conv_bn  7x1 {c7} 192
    {block}/Branch_2/Conv2d_0a_1x1   {block}.branch7x7dbl_1   conv_bn  1x1 768 {c7}
    {block}/Branch_2/Conv2d_0b_7x1   {block}.branch7x7dbl_2   conv_bn  7x1 {c7} {c7}
    {block}/Branch_2/Conv2d_0c_1x7   {block}.branch7x7dbl_3   conv_bn  1x7 {c7} {c7}
    {block}/Branch_2/Conv2d_0d_7x1   {block}.branch7x7dbl_4   conv_bn  7x1 {c7} {c7}
    {block}/Branch_2/Conv2d_0e_1x7   {block}.branch7x7dbl_5   conv_bn  1x7 {c7} 192
    {block}/Branch_3/Conv2d_0b_1x1   {block}.branch_pool      conv_bn  1x1 768 192
"""


def _inception_e(block: str, in_chs: int, branch1_3x1: str) -> str:
    return f"""
    {block}/Branch_0/Conv2d_0a_1x1   {block}.branch1x1        conv_bn  1x1 {in_chs} 320
    {block}/Branch_1/Conv2d_0a_1x1   {block}.branch3x3_1      conv_bn  1x1 {in_chs} 384
    {block}/Branch_1/Conv2d_0b_1x3   {block}.branch3x3_2a     conv_bn  1x3 384 384
    {block}/Branch_1/{branch1_3x1}   {block}.branch3x3_2b     conv_bn  3x1 384 384
    {block}/Branch_2/Conv2d_0a_1x1   {block}.branch3x3dbl_1   conv_bn  1x1 {in_chs} 448
    {block}/Branch_2/Conv2d_0b_3x3   {block}.branch3x3dbl_2   conv_bn  3x3 448 384
    {block}/Branch_2/Conv2d_0c_1x3   {block}.branch3x3dbl_3a  conv_bn  1x3 384 384
    {block}/Branch_2/Conv2d_0d_3x1   {block}.branch3x3dbl_3b  conv_bn  3x1 384 384
    {block}/Branch_3/Conv2d_0b_1x1   {block}.branch_pool      conv_bn  1x1 {in_chs} 192
"""


LAYERS = table(ROOT, bn_eps=BN_EPS, rows="".join([
    """
    Conv2d_1a_3x3                    Conv2d_1a_3x3            conv_bn  3x3 3 32
    Conv2d_2a_3x3                    Conv2d_2a_3x3            conv_bn  3x3 32 32
    Conv2d_2b_3x3                    Conv2d_2b_3x3            conv_bn  3x3 32 64
    Conv2d_3b_1x1                    Conv2d_3b_1x1            conv_bn  1x1 64 80
    Conv2d_4a_3x3                    Conv2d_4a_3x3            conv_bn  3x3 80 192
    """,
    _inception_a("Mixed_5b", 192, 32, ("Conv2d_0a_1x1", "Conv2d_0b_5x5")),
    _inception_a("Mixed_5c", 256, 64, ("Conv2d_0b_1x1", "Conv_1_0c_5x5")),  # quirks: 0b, Conv_1
    _inception_a("Mixed_5d", 288, 64, ("Conv2d_0a_1x1", "Conv2d_0b_5x5")),
    """
    Mixed_6a/Branch_0/Conv2d_1a_1x1  Mixed_6a.branch3x3       conv_bn  3x3 288 384  # quirk: 3x3/2
    Mixed_6a/Branch_1/Conv2d_0a_1x1  Mixed_6a.branch3x3dbl_1  conv_bn  1x1 288 64
    Mixed_6a/Branch_1/Conv2d_0b_3x3  Mixed_6a.branch3x3dbl_2  conv_bn  3x3 64 96
    Mixed_6a/Branch_1/Conv2d_1a_1x1  Mixed_6a.branch3x3dbl_3  conv_bn  3x3 96 96    # quirk: 3x3/2
    """,
    _inception_c("Mixed_6b", 128),
    _inception_c("Mixed_6c", 160),
    _inception_c("Mixed_6d", 160),
    _inception_c("Mixed_6e", 192),
    """
    AuxLogits/Conv2d_1b_1x1          AuxLogits.conv0          conv_bn  1x1 768 128
    AuxLogits/Conv2d_2a_5x5          AuxLogits.conv1          conv_bn  5x5 128 768
    AuxLogits/Conv2d_2b_1x1          AuxLogits.fc             conv_classifier 768

    Mixed_7a/Branch_0/Conv2d_0a_1x1  Mixed_7a.branch3x3_1     conv_bn  1x1 768 192
    Mixed_7a/Branch_0/Conv2d_1a_3x3  Mixed_7a.branch3x3_2     conv_bn  3x3 192 320
    Mixed_7a/Branch_1/Conv2d_0a_1x1  Mixed_7a.branch7x7x3_1   conv_bn  1x1 768 192
    Mixed_7a/Branch_1/Conv2d_0b_1x7  Mixed_7a.branch7x7x3_2   conv_bn  1x7 192 192
    Mixed_7a/Branch_1/Conv2d_0c_7x1  Mixed_7a.branch7x7x3_3   conv_bn  7x1 192 192
    Mixed_7a/Branch_1/Conv2d_1a_3x3  Mixed_7a.branch7x7x3_4   conv_bn  3x3 192 192
    """,
    _inception_e("Mixed_7b", 1280, "Conv2d_0b_3x1"),  # quirk: 0b_3x1 here ...
    _inception_e("Mixed_7c", 2048, "Conv2d_0c_3x1"),  # ... 0c_3x1 in Mixed_7c
    """
    Logits/Conv2d_1c_1x1             fc                       conv_classifier 2048
    """,
]))

END_POINTS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_3a_3x3", "Conv2d_3b_1x1",
    "Conv2d_4a_3x3", "MaxPool_5a_3x3", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
    "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
    "AuxLogits", "PreLogits", "Logits",
)
# The heads' tensors in TF-Slim's graph, below the root (the trunk's follow ``slim_op``).
# PreLogits: the pool (TF-Slim's end point is the dropout after it, the identity at inference).
HEADS = {"AuxLogits": "AuxLogits/SpatialSqueeze", "PreLogits": "Logits/AvgPool_1a_8x8/AvgPool",
         "Logits": "Logits/SpatialSqueeze"}
AUX_INPUT = "Mixed_6e"  # the end point the aux head reads
# network order: the aux head after the block it reads
_ORDER = [name for name in END_POINTS if name != "AuxLogits"]
_ORDER.insert(_ORDER.index(AUX_INPUT) + 1, "AuxLogits")
TAPS = inception_taps("inception_v3", ROOT, _ORDER, heads=HEADS)

SPEC = Architecture(
    name="inception_v3",
    title="Inception v3",
    tf_root=ROOT,
    layers=tuple(LAYERS),
    end_points=END_POINTS,
    classifier_end_points=("AuxLogits", "PreLogits", "Logits"),
    eval=inception_eval(classifier="fc"),
    model="models.inception_v3.model:InceptionV3",
    oracle="models.inception_v3.oracle",
    oracle_name="TF-Slim",
    paper="Szegedy, Vanhoucke, Ioffe, Shlens, Wojna. Rethinking the Inception Architecture "
          "for Computer Vision. arXiv:1512.00567",
    keras=KerasAdapter(application="keras.applications.InceptionV3"),
    timm=TimmFacts(
        model="inception_v3", computes_tf=False, pool_size=(8, 8),
        differs="timm's (and torchvision's) inception_v3 count the zero padding in the 3x3 "
                "average pools of its Inception blocks (count_include_pad=True), TF's SAME "
                "pools divide by the real inputs only: near the borders every such pool "
                "differs, and so do the logits"),
    taps=TAPS,
    # the renamed copies attack code passes around (JHL-HUST/VT simple_eval.py and others):
    # adv_ / ens3_adv_ / ens4_adv_inception_v3_rename.ckpt
    aliases=("AdvInceptionV3", "Ens3AdvInceptionV3", "Ens4AdvInceptionV3"),
)
