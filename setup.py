"""longformer_jax: the Longformer in JAX / Flax nnx."""

from setuptools import find_packages, setup

setup(
    name="longformer_jax",
    version="0.1.0",
    description="Longformer (sliding-window + global attention) in JAX / Flax nnx",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["longformer_jax", "longformer_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "ml-collections>=1.1",
        "tensorflow-datasets>=4.9.10",
        "safetensors>=0.8",
        "grain>=0.2.18",
        "tokenizers>=0.20",
        "tensorboardX>=2.6",
        "absl-py>=2.0",
        "numpy>=2.0",
        "matplotlib>=3.9",
        "flatbuffers>=24.3",  # jax.export serialisation (longformer_jax.export)
        "rouge-score>=0.1.2",  # summarisation metrics (eval_metrics.rouge)
        # Paths local or gs:// (longformer_jax/fileio.py): epath, and gcsfs behind it.
        "etils[epath]>=1.7",
        "gcsfs>=2024.2",
    ],
    extras_require={
        # torch is pinned to the CPU build: it is only the numerical reference.
        # References the metrics are checked against: scikit-learn (F1), seqeval
        # (conlleval entity F1), torchmetrics (the SQuAD evaluation), nltk (the
        # Kneser-Ney and Witten-Bell n-gram LMs of experiments/ngram.py).
        # libtpu: the TPU compiler, for the ahead-of-time TPU compiles (``--mode=compile``,
        # tests/test_aot.py); the version ``jax[tpu]`` of our jax pins. pytest-xdist: the
        # suite runs on every core (pytest.ini). gcp-storage-emulator: the Cloud Storage
        # API on a local port, for the tests of gs:// paths.
        "test": ["pytest>=8", "pytest-xdist>=3.8", "torch==2.13.0", "transformers>=5.0",
                 "portpicker>=1.6", "scikit-learn>=1.5", "seqeval>=1.2.2", "torchmetrics>=1.4", "nltk>=3.9",
                 "libtpu==0.0.42.1", "gcp-storage-emulator>=2026.7"],
        "tpu-compile": ["libtpu==0.0.42.1"],
        # tfds's catalog builders (imdb_reviews, scientific_papers, imagenette...) unpack
        # their archives with tf.io.gfile and find their files with importlib_resources:
        # python -m longformer_jax.prepare NAME DATA_DIR. Nothing else imports TensorFlow.
        "prepare": ["tensorflow-cpu>=2.16", "importlib_resources>=6"],
        # Deviceless CUDA compiles (h100-N / a100-N topologies): about 5.5 GB of wheels.
        "gpu-compile": ["jax[cuda12]==0.10.2"],
    },
)
