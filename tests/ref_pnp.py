"""Reference checks for PNP-VQA's question answering (LAVIS `PNPUnifiedQAv2FiD`) and its string helpers."""

from __future__ import annotations

import torch
from refcase import Case

from fusioncam.checkpoints import load_t5_weights, read_state_dict
from fusioncam.models.t5_fid import FusionInDecoderQA
from fusioncam.vqa_text import add_new_captions, qa_passages, question_for_itm


def check_pnp_fid_qa(case: Case) -> None:
    config = case.config
    t5 = {key: value for key, value in config["t5"].items() if key not in ("dense_act_fn", "is_gated_act")}
    qa = FusionInDecoderQA.from_preset("base", **t5).eval()
    ignored = load_t5_weights(qa.model, read_state_dict(case.path / "weights.safetensors"), "reference weights")
    assert ignored == []
    assert qa.model.shared.weight is qa.model.lm_head.weight

    input_ids, attention_mask = case.inputs["input_ids"], case.inputs["attention_mask"]
    with torch.no_grad():
        encoding = qa.encode(input_ids, attention_mask)
        case.check("encoder_last_hidden_state", encoding.last_hidden_state)
        case.check("decoder_logits", qa.logits(encoding, case.inputs["decoder_input_ids"]))

    # LAVIS's max_length / min_length count the decoder start token.
    for name, settings in (("greedy_ids", "generate_greedy"), ("beam_ids_encoder_output_as_dict", "generate_beam")):
        settings = config[settings]
        ids = qa.generate(
            encoding,
            num_beams=settings["num_beams"],
            max_new_tokens=settings["max_length"] - 1,
            min_new_tokens=max(settings["min_length"] - 1, 0),
        )
        assert ids.tolist() == case.meta[name] == case.outputs[name].tolist(), name


def check_pnp_text_helpers(case: Case) -> None:
    for call in case.meta["prepare_qa_input"]:
        passages = [
            qa_passages(question, captions, call["num_captions"], call["num_captions_fid"])
            for question, captions in zip(call["text_input"], call["captions"], strict=True)
        ]
        assert passages == call["question_captions"], call

    for item in case.meta["question_strip"]:
        assert question_for_itm(item["question"]) == item["stripped"], item

    for call in case.meta["forward_cap_dedup"]:
        captions: list[list[str]] = [[] for _ in range(call["batch_size"])]
        rounds = 0
        while min(len(image_captions) for image_captions in captions) < call["num_captions"]:
            decoded = call["decoded_outputs_per_round"][rounds]
            captions = add_new_captions(captions, decoded, call["prompt"], call["num_captions"])
            rounds += 1
        assert rounds == call["rounds_used"]
        assert captions == call["captions"]


CHECKS = {"pnp_fid_qa": check_pnp_fid_qa, "pnp_text_helpers": check_pnp_text_helpers}
