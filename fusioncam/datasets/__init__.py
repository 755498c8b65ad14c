"""Readers for question-answering and retrieval datasets in the layouts their publishers ship, and for results files.

One module per family: `vqa` (VQAv2 and OK-VQA: a questions file and an annotations file per split, COCO images
named by id), `gqa` (GQA's balanced question files), `karpathy` (COCO and Flickr30k Karpathy splits as BLIP and
LAVIS ship them) and `refcoco` (RefCOCO, RefCOCO+ and RefCOCOg: the refer pickles with COCO's instances.json, or
their parquet/JSON/JSONL conversions; boxes and object masks). Each reader checks the fields it needs and fails with
a `DatasetError` naming the file, the record and what is missing, so that a wrong file (test questions given as
annotations, an older release) is told apart from a damaged one before anything is scored. Nothing here needs torch;
reading parquet needs pyarrow (`pip install pyarrow`).
"""

from fusioncam.datasets.gqa import GqaQuestion, read_gqa_predictions, read_gqa_questions
from fusioncam.datasets.json_fields import DatasetError
from fusioncam.datasets.karpathy import (
    CaptionPair,
    RetrievalSplit,
    TrainSplit,
    read_karpathy_eval,
    read_karpathy_train,
)
from fusioncam.datasets.refcoco import ReferringExpression, object_mask, read_refcoco
from fusioncam.datasets.vqa import (
    VqaAnnotation,
    VqaQuestion,
    coco_image_path,
    read_vqa_annotations,
    read_vqa_predictions,
    read_vqa_questions,
)

__all__ = [
    "CaptionPair",
    "DatasetError",
    "GqaQuestion",
    "ReferringExpression",
    "RetrievalSplit",
    "TrainSplit",
    "VqaAnnotation",
    "VqaQuestion",
    "coco_image_path",
    "object_mask",
    "read_gqa_predictions",
    "read_gqa_questions",
    "read_karpathy_eval",
    "read_karpathy_train",
    "read_refcoco",
    "read_vqa_annotations",
    "read_vqa_predictions",
    "read_vqa_questions",
]
