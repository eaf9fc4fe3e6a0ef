rule corpus:
    """Documents -> split -> (scale model: tokenizer) -> memory-mapped token arrays."""
    input:
        tokenizer=corpus_tokenizer(),
    output:
        meta=RESULTS / "corpus" / "corpus.json",
        tokens=expand(RESULTS / "corpus" / "{split}.bin", split=SPLITS),
        offsets=expand(RESULTS / "corpus" / "{split}.idx.npy", split=SPLITS),
        manifest=RESULTS / "corpus" / "manifest.json",
    log:
        LOGS / "corpus.log",
    benchmark:
        BENCH / "corpus.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cmd=stage_cmd("corpus"),
        tokenizer=lambda wc, input: (
            f"--tokenizer {input.tokenizer}" if input.tokenizer else ""
        ),
        corpus=config["corpus"],
        tokenizer_cfg=config["tokenizer"],
    shell:
        "{params.cmd} {params.tokenizer} --out $(dirname {output.meta}) > {log} 2>&1"


rule import_model:
    """A real model (hub id, local folder, GGUF) -> normalized HF folder + RoPE geometry."""
    output:
        model=directory(IMPORTED / "model"),
        geometry=IMPORTED / "geometry.json",
        manifest=IMPORTED / "manifest.json",
    log:
        LOGS / "import_model.log",
    benchmark:
        BENCH / "import_model.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        cmd=stage_cmd("import-model"),
        model=config["model"],
    shell:
        "{params.cmd} --threads {threads} --out $(dirname {output.geometry}) > {log} 2>&1"


rule pretrain:
    """The offline scale model: retrieval-curriculum pretraining at L0 (resumable checkpoints)."""
    input:
        corpus=rules.corpus.output.meta,
    output:
        model=directory(RESULTS / "base_model" / "model"),
        curve=report(
            RESULTS / "base_model" / "pretrain_curve.csv",
            caption="../report/pretrain.rst",
            category="2. Base model",
        ),
        summary=RESULTS / "base_model" / "pretrain.json",
        manifest=RESULTS / "base_model" / "manifest.json",
    log:
        LOGS / "pretrain.log",
    benchmark:
        BENCH / "pretrain.tsv"
    retries: 1
    conda:
        "../envs/longrope2.yaml"
    threads: 1  # faster than 2 for a 1M-parameter model (measured)
    resources:
        mem_mb=4000,
        runtime=lambda wc, attempt: 60 * attempt,
    params:
        cmd=stage_cmd("pretrain"),
        checkpoints=RESULTS / ".checkpoints" / "pretrain",
        scale_model=config["scale_model"],
        pretrain=config["pretrain"],
        needles=config["needles"],
    shell:
        "{params.cmd} --threads {threads} --corpus $(dirname {input.corpus}) "
        "--checkpoint-dir {params.checkpoints} --out $(dirname {output.summary}) > {log} 2>&1"


rule retrieval:
    """Retrieval check of the base model: needle accuracy at L0 and, unscaled, at multiples of L0."""
    input:
        model=base_model(),
        corpus=rules.corpus.output.meta,
    output:
        json=report(
            RESULTS / "base_model" / "retrieval" / "retrieval.json",
            caption="../report/retrieval.rst",
            category="2. Base model",
        ),
        manifest=RESULTS / "base_model" / "retrieval" / "manifest.json",
    log:
        LOGS / "retrieval.log",
    benchmark:
        BENCH / "retrieval.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cmd=stage_cmd("retrieval"),
        retrieval=config["retrieval"],
        needles=config["needles"],
    shell:
        "{params.cmd} --threads {threads} --model {input.model} --corpus $(dirname {input.corpus}) "
        "--out $(dirname {output.json}) > {log} 2>&1"
