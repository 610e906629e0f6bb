"""`seq2seq-train recipe=<name> [key=value ...]`: train a model into a run folder (the command: seq2seq.cli.train).

The data path: config -> prepare_data (the tokenizer and the cached splits) -> build_model -> Trainer.fit.
Also `python -m seq2seq.train`, which is how torchrun launches it
(`torchrun --nproc_per_node=N -m seq2seq.train recipe=...`; see docs/distributed.md).
A run stopped by SIGTERM or SIGINT saves a checkpoint and exits with 128 + the signal's number; errors
are reported in one line with exit code 2 (bad config or input) or 1 (a failure while training), see seq2seq.cli.
"""
from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from seq2seq import host
from seq2seq.config import check_keys, options_from, setup_logging, to_dict
from seq2seq.data.pairs import filter_training_pairs
from seq2seq.data.prepare import prepare_data
from seq2seq.generation.options import GenerationOptions
from seq2seq.host import resolve_device, set_threads
from seq2seq.models.kernels import attention as attention_kernels
from seq2seq.models.kernels import gemm
from seq2seq.models.model import build_model
from seq2seq.training import distributed
from seq2seq.training.optim import build_schedule
from seq2seq.training.trainer import Trainer, TrainerOptions

log = logging.getLogger("seq2seq.train")


def train(cfg: DictConfig, run_dir: Path) -> dict:
    check_keys("dist", to_dict(cfg.dist), ("backend", "timeout_minutes", "main_wait_minutes"))
    check_keys("kernels", to_dict(cfg.kernels), ("linear", "attention", "onednn_cache_capacity", "cache_dir"))
    dist = distributed.from_environment()
    setup_logging(dist.rank)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    set_threads(cfg.threads)
    distributed.init(dist, device, cfg.dist.backend, cfg.dist.timeout_minutes, cfg.dist.main_wait_minutes)
    run_dir = Path(distributed.broadcast_object(str(run_dir), dist))  # rank 0's folder for every rank
    options = options_from(TrainerOptions, "trainer", to_dict(cfg.trainer))
    generation = options_from(GenerationOptions, "generation", to_dict(cfg.generation))
    schedule = _schedule(cfg)
    if dist.is_main:
        _open_run_folder(cfg, run_dir, dist, device)
    data_cfg = to_dict(cfg.data)
    if dist.is_main:  # rank 0 fills the cache; the others then read it
        data = prepare_data(data_cfg, to_dict(cfg.tokenizer), seed=cfg.seed)
    distributed.wait_for_main(dist)
    if not dist.is_main:
        data = prepare_data(data_cfg, to_dict(cfg.tokenizer), seed=cfg.seed)
    _check_same_tokenizer(data.tokenizer, dist)
    data.train = filter_training_pairs(data.train, min(data_cfg["max_src_len"], cfg.model.max_positions),
                                       min(data_cfg["max_tgt_len"], cfg.model.max_positions),
                                       data_cfg["long_pairs"])
    if dist.is_main:
        data.tokenizer = data.tokenizer.save(run_dir / "tokenizer")

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model_cfg = to_dict(cfg.model)
    model = build_model(model_cfg, data.tokenizer.src_vocab_size, data.tokenizer.tgt_vocab_size,
                        data.tokenizer.joint).to(device)
    params = sum(p.numel() for p in model.parameters())
    log.info("model: %s encoder, %s decoder, %.2fM parameters, vocabulary %d/%d, %d training pairs",
             cfg.model.encoder.name, cfg.model.decoder.name, params / 1e6, data.tokenizer.src_vocab_size,
             data.tokenizer.tgt_vocab_size, len(data.train))
    kernels = configure_kernels(cfg.kernels, model, device, data_cfg["batch_tokens"], dist)
    trainer = Trainer(model, data, run_dir, options, optim=to_dict(cfg.optim), schedule=schedule,
                      batch_tokens=data_cfg["batch_tokens"], valid_batch_tokens=data_cfg["valid_batch_tokens"],
                      generation=generation, model_config=model_cfg, seed=cfg.seed, device=device, dist=dist,
                      host_cache=cfg.kernels.cache_dir, setup={"kernels": kernels, "host": host.describe()})
    try:
        summary = trainer.fit()
    finally:
        distributed.shutdown()
    summary["parameters"] = params
    if dist.is_main:
        log.info("done: %s", summary)
    return summary


def _open_run_folder(cfg: DictConfig, run_dir: Path, dist, device) -> None:
    """Rank 0: the run folder with its train.log (a copy of the log) and config.yaml (the composed config)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    log.info("run folder: %s", run_dir)
    if dist.enabled:
        log.info("distributed data parallel: %d processes, %s backend", dist.world_size,
                 distributed.resolve_backend(cfg.dist.backend, device))


def configure_kernels(kernels, model, device, batch_tokens: int, dist=None) -> dict:
    """kernels.linear and kernels.attention for this process (seq2seq.models.kernels): on a CPU, auto times the
    model's product shapes at a training chunk (up to 256 rows) and a decoding step's size (32 rows), and its
    attention at the batch's tokens; every rank takes rank 0's plans. Returns {"linear": .., "attention": ..}."""
    if device.type != "cpu":
        return {"linear": {"choice": f"torch ({device.type})"}, "attention": {"choice": f"torch ({device.type})"}}
    main = dist is None or dist.is_main
    record = {
        "linear": gemm.configure(kernels.linear if main else "mkl", kernels.onednn_cache_capacity, model,
                                 rows=(min(batch_tokens, 256), 32), cache_dir=kernels.cache_dir),
        "attention": attention_kernels.configure(kernels.attention if main else "fused", model, batch_tokens,
                                                 cache_dir=kernels.cache_dir),
    }
    if dist is not None and dist.enabled:  # rank 0 measured; the others take its plans
        plans = distributed.broadcast_object((gemm.current_plan(), attention_kernels.current_plan(), record), dist)
        gemm.set_plan(plans[0])
        attention_kernels.set_plan(plans[1])
        record = plans[2]
    log.info("matrix products (kernels.linear=%s): %s", kernels.linear, record["linear"])
    log.info("attention (kernels.attention=%s): %s", kernels.attention, record["attention"])
    return record


def _schedule(cfg):
    """The learning-rate schedule of the lr_scheduler group, built (unknown keys and impossible values
    refused) before the data and the model."""
    return build_schedule(cfg.optim.lr, to_dict(cfg.lr_scheduler))


def _check_same_tokenizer(tokenizer, dist) -> None:
    """Every rank must encode with rank 0's vocabulary (a node without the shared cache would train its own)."""
    if not dist.enabled:
        return
    digest = hashlib.sha1()
    for path in (tokenizer.src_model_path, tokenizer.tgt_model_path):
        digest.update(Path(path).read_bytes())
    digests = distributed.gather_objects(digest.hexdigest(), dist)
    if len(set(digests)) > 1:
        raise RuntimeError(f"ranks {[r for r, d in enumerate(digests) if d != digests[0]]} built another "
                           "tokenizer than rank 0: put data.cache_dir on storage that every node shares")


if __name__ == "__main__":  # python -m seq2seq.train: the seq2seq-train command
    from seq2seq.cli.train import main

    main()
