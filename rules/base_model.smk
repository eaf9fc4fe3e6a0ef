rule corpus:
    """Documents -> split -> (scale model: tokenizer) -> memory-mapped token arrays."""
    input:
        tokenizer=[] if IS_SCALE else IMPORTED / "model",
    output:
        **({"tokenizer": directory(CORPUS / "tokenizer")} if IS_SCALE else {}),
        meta=CORPUS / "corpus.json",
        tokens=expand(CORPUS / "{split}.bin", split=SPLITS),
        offsets=expand(CORPUS / "{split}.idx.npy", split=SPLITS),
        manifest=CORPUS / "manifest.json",
    log:
        LOGS / "corpus.log",
    benchmark:
        BENCH / "corpus.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: RES["corpus"]["threads"]
    resources:
        mem_mb=RES["corpus"]["mem_mb"],
        runtime=runtime("corpus"),
    params:
        config=stage_config("corpus"),
        tokenizer=optional_input("--tokenizer", "tokenizer"),
        out=folder("manifest"),
    shell:
        "longrope2 corpus --config-json {params.config:q} {params.tokenizer} --out {params.out:q} "
        "> {log:q} 2>&1"


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
    threads: RES["import-model"]["threads"]
    resources:
        mem_mb=RES["import-model"]["mem_mb"],
        runtime=runtime("import-model"),
    params:
        config=import_config(False),
        out=folder("manifest"),
    shell:
        "longrope2 import-model --config-json {params.config:q} --threads {threads} "
        "--out {params.out:q} > {log:q} 2>&1"


rule import_as_is:
    """The already-extended checkpoint as_is evaluates (extension.as_is) -> HF folder, its own L0 kept."""
    output:
        model=directory(AS_IS_IMPORTED / "model"),
        geometry=AS_IS_IMPORTED / "geometry.json",
        manifest=AS_IS_IMPORTED / "manifest.json",
    log:
        LOGS / "import_as_is.log",
    benchmark:
        BENCH / "import_as_is.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: RES["import-model"]["threads"]
    resources:
        mem_mb=RES["import-model"]["mem_mb"],
        runtime=runtime("import-model"),
    params:
        config=import_config(True),
        out=folder("manifest"),
    shell:
        "longrope2 import-model --as-is --config-json {params.config:q} --threads {threads} "
        "--out {params.out:q} > {log:q} 2>&1"


rule pretrain:
    """The offline scale model: retrieval-curriculum pretraining at L0 (resumable checkpoints)."""
    input:
        corpus=CORPUS_FILES,
    output:
        model=directory(RESULTS / "base_model" / "model"),
        curve=report(
            RESULTS / "base_model" / "pretrain_curve.csv",
            caption="../report/pretrain.rst",
            category="2. Base model",
        ),
        summary=RESULTS / "base_model" / "pretrain.json",
        distances=RESULTS / "base_model" / "distances.csv",
        distances_plot=report(
            RESULTS / "base_model" / "distances.png",
            caption="../report/distances.rst",
            category="2. Base model",
        ),
        manifest=RESULTS / "base_model" / "manifest.json",
    log:
        LOGS / "pretrain.log",
    benchmark:
        BENCH / "pretrain.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: RES["pretrain"]["threads"]
    resources:
        mem_mb=RES["pretrain"]["mem_mb"],
        runtime=runtime("pretrain"),
    params:
        config=stage_config("pretrain"),
        corpus=CORPUS,
        checkpoints=RESULTS / ".checkpoints" / "pretrain",
        out=folder("manifest"),
    shell:
        "longrope2 pretrain --config-json {params.config:q} --threads {threads} --corpus {params.corpus:q} "
        "--checkpoint-dir {params.checkpoints:q} --out {params.out:q} > {log:q} 2>&1"


rule retrieval:
    """Retrieval check of the base model: needle accuracy at L0 and, unscaled, at multiples of L0."""
    input:
        model=base_model(),
        corpus=CORPUS_FILES,
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
    threads: RES["retrieval"]["threads"]
    resources:
        mem_mb=RES["retrieval"]["mem_mb"],
        runtime=runtime("retrieval"),
        gpu=RES["retrieval"]["gpu"],
    params:
        config=stage_config("retrieval"),
        corpus=CORPUS,
        out=folder("manifest"),
    shell:
        "longrope2 retrieval --config-json {params.config:q} --threads {threads} --model {input.model:q} "
        "--corpus {params.corpus:q} --out {params.out:q} > {log:q} 2>&1"
