"""`seq2seq-train recipe=<name> [key=value ...]`: train a model into a run folder.

Also `python -m seq2seq.train`, which is how torchrun launches it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from seq2seq.config import config_dir, resolve_device, set_threads, setup_logging, to_dict

log = logging.getLogger("seq2seq.train")


def train(cfg: DictConfig, run_dir: Path) -> dict:
    import random

    import torch

    from seq2seq.data.prepare import filter_training_pairs, prepare_data
    from seq2seq.generation.search import GenerationOptions
    from seq2seq.models.model import build_model
    from seq2seq.training import distributed
    from seq2seq.training.trainer import Trainer, TrainerOptions

    dist = distributed.from_environment()
    setup_logging(dist.rank)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    set_threads(cfg.threads)
    distributed.init(dist, device)
    run_dir = Path(_shared_run_dir(str(run_dir), dist))
    options = TrainerOptions(**to_dict(cfg.trainer))
    generation = GenerationOptions(**to_dict(cfg.generation))
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        log.info("run folder: %s", run_dir)

    data_cfg = to_dict(cfg.data)
    if dist.is_main:  # rank 0 fills the cache; the others then read it
        data = prepare_data(data_cfg, to_dict(cfg.tokenizer), seed=cfg.seed)
    distributed.barrier(dist)
    if not dist.is_main:
        data = prepare_data(data_cfg, to_dict(cfg.tokenizer), seed=cfg.seed)
    data.train = filter_training_pairs(data.train, min(data_cfg["max_src_len"], cfg.model.max_positions),
                                       min(data_cfg["max_tgt_len"], cfg.model.max_positions))
    if dist.is_main:
        data.tokenizer = data.tokenizer.save(run_dir / "tokenizer")

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model_cfg = to_dict(cfg.model)
    model = build_model(model_cfg, data.tokenizer.src_vocab_size, data.tokenizer.tgt_vocab_size).to(device)
    params = sum(p.numel() for p in model.parameters())
    log.info("model: %s encoder, %s decoder, %.2fM parameters, vocabulary %d/%d, %d training pairs",
             cfg.model.encoder.name, cfg.model.decoder.name, params / 1e6, data.tokenizer.src_vocab_size,
             data.tokenizer.tgt_vocab_size, len(data.train))
    trainer = Trainer(model, data, run_dir, options, optim=to_dict(cfg.optim), schedule=_schedule(cfg),
                      batch_tokens=data_cfg["batch_tokens"], valid_batch_tokens=data_cfg["valid_batch_tokens"],
                      generation=generation, model_config=model_cfg, seed=cfg.seed, device=device, dist=dist)
    try:
        summary = trainer.fit()
    finally:
        distributed.shutdown()
    summary["parameters"] = params
    if dist.is_main:
        log.info("done: %s", summary)
    return summary


def _schedule(cfg) -> dict:
    sched = to_dict(cfg.lr_scheduler)
    if sched.pop("name") != "inverse_sqrt":
        raise ValueError("lr_scheduler: only inverse_sqrt is implemented")
    return sched


def _shared_run_dir(run_dir: str, dist) -> str:
    """Rank 0's run folder for every rank (each rank's Hydra stamps its own time)."""
    if not dist.enabled:
        return run_dir
    import torch.distributed as tdist

    box = [run_dir]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    train(cfg, Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
