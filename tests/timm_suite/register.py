"""Write a copy of timm's tests/test_models.py with T2T-ViT entered where a timm pull request enters a ViT-family model.

timm's suite sorts models into lists: `NON_STD_FILTERS` (transformers whose `forward_features` returns tokens,
not a (B, C, H, W) map: `vit_*`, `deit*`, `pit_*`, `tnt_*`, ...; they get the token-model checks instead of the
CNN ones) and `FEAT_INTER_FILTERS` (modules whose models have `forward_intermediates()` and `features_only`
through FeatureGetterNet). A model ported to timm is added to both, so we add `t2t_vit*` and our module
(`models`, the last part of `t2t_vit_lite.models`, which is how timm's registry names a model's module).
Nothing else of the file changes; the script fails if either anchor is missing (a new timm layout).
"""
import sys, pathlib

src, dst = map(pathlib.Path, sys.argv[1:3])
text = src.read_text()
edits = {"NON_STD_FILTERS = [\n": "NON_STD_FILTERS = [\n    't2t_vit*',  # t2t-vit-lite: a token model, like vit_*\n",
         "FEAT_INTER_FILTERS = [\n": "FEAT_INTER_FILTERS = [\n    'models',  # t2t-vit-lite: t2t_vit_lite.models has forward_intermediates()\n"}
for anchor, new in edits.items():
    if text.count(anchor) != 1:
        sys.exit(f'{src}: expected one "{anchor.strip()}" line; timm changed its test layout, update {__file__}')
    text = text.replace(anchor, new)
dst.write_text(text)
