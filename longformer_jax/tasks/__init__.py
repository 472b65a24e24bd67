"""Tasks (see :mod:`.base`): the registry and every task module, registered on import."""

from longformer_jax.tasks.base import (TASKS, Task, build, finalize, forward, get,
                                       position_ids, register)
from longformer_jax.tasks import (candidate_selection, classification,  # noqa: F401
                                  image_classification, language_modeling,
                                  question_answering, seq2seq, token_classification)
from longformer_jax.tasks.language_modeling import mask_tokens

__all__ = ["TASKS", "Task", "build", "finalize", "forward", "get", "position_ids",
           "register", "mask_tokens"]
