"""MRV (Mean Rank Variance): the cross-lingual consistency metric of Nie et al., KDD 2024.

The formula lives in ``mrv_core.py`` beside this file (the same file the ``modeling_ccr`` package uses);
``evaluate`` copies it into its module cache together with this script.
"""

import datasets
import evaluate

from .mrv_core import VARIANTS, compute_mrv

_CITATION = """\
@inproceedings{nie2024improving,
  title     = {Improving the Consistency in Cross-Lingual Cross-Modal Retrieval with 1-to-K Contrastive Learning},
  author    = {Nie, Zhijie and Zhang, Richong and Feng, Zhangchi and Huang, Hailang and Liu, Xudong},
  booktitle = {Proceedings of the 30th ACM SIGKDD Conference on Knowledge Discovery and Data Mining},
  year      = {2024}
}
"""

_DESCRIPTION = """\
Mean Rank Variance (MRV) measures how consistently a cross-lingual retrieval model ranks each instance
across languages. For every instance, take its (1-based) retrieval rank in each of its K languages and
compute the population variance of those ranks; MRV is the mean over instances. 0 means every language
ranks every instance identically; larger is less consistent. Recall@K cannot show this.
"""

_KWARGS_DESCRIPTION = """
Args:
    ranks (`list` of `list` of `int`): one row per instance, one entry per language: the instance's 1-based
        rank in that language. A missing language is `None` (or NaN) and is left out of that instance.
        Instances with fewer than two languages are excluded and counted in `num_excluded`.
    variant (`str`, default `"variance"`): `"variance"` (the paper's MRV) or `"std"` (mean standard
        deviation, what the authors' released code printed).
Returns:
    mrv (`float`): mean over counted instances of the per-instance variance (or std); NaN if none counts.
    variant (`str`): the variant used.
    num_instances (`int`): instances that counted (two or more languages).
    num_excluded (`int`): instances left out (fewer than two languages).
    excluded_indices (`list` of `int`): their row indices.
Examples:
    >>> mrv = evaluate.load("mrv")
    >>> mrv.compute(ranks=[[1, 1, 1], [1, 3, None], [2, None, None]])["mrv"]
    0.5
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MRV(evaluate.Metric):
    """Mean Rank Variance across languages."""

    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"ranks": datasets.Sequence(datasets.Value("float64"))}),
            homepage="https://arxiv.org/abs/2406.18254",
            reference_urls=["https://arxiv.org/abs/2406.18254"],
        )

    def _compute(self, ranks, variant="variance"):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        return compute_mrv(ranks, variant=variant)
