"""Mixture-of-Students: the distillation loss against NumPy, staged KD,
a frozen teacher."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.models import MoELanguageModel
from sgmoe.models import Perplexity
from sgmoe.models import StudentDistillation

VOCABULARY, BATCH, LENGTH = 100, 4, 6


def models():
    teacher = MoELanguageModel.from_preset("tiny_moe", seed=1, padding_id=0)
    student = MoELanguageModel.from_preset(
        "tiny_moe", seed=2, padding_id=0, layer_types=("moe", "lstm"))
    for model in (teacher, student):
        model.build((None, None))
    return student, teacher


def data(seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(4, VOCABULARY, (BATCH, LENGTH + 1)).astype("int32")
    ids[0, -2:] = 0  # padding, left out of both terms
    return ids[:, :-1], ids[:, 1:]


def log_softmax(logits):
    logits = logits - logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def reference_loss(student_logits, teacher_logits, targets, alpha,
                   temperature):
    mask = (targets != 0).astype(np.float64)
    log_q = log_softmax(student_logits.astype(np.float64))
    cross_entropy = -(np.take_along_axis(log_q, targets[..., None], -1)[
        ..., 0] * mask).sum() / mask.sum()
    p_t = log_softmax(teacher_logits / temperature)
    q_t = log_softmax(student_logits / temperature)
    kl = (np.exp(p_t) * (p_t - q_t)).sum(-1)
    distillation = temperature ** 2 * (kl * mask).sum() / mask.sum()
    return (1 - alpha) * cross_entropy + alpha * distillation


@pytest.mark.parametrize("alpha, temperature", [(0.5, 1.0), (0.8, 2.0),
                                                (0.0, 1.0), (1.0, 3.0)])
def test_loss_matches_reference(alpha, temperature):
    student, teacher = models()
    distillation = StudentDistillation(student, teacher, alpha=alpha,
                                       temperature=temperature)
    x, y = data()
    student_logits = student(x, training=False)
    loss = distillation.compute_loss(x, y, student_logits, training=False)
    expected = reference_loss(
        ops.convert_to_numpy(student_logits),
        ops.convert_to_numpy(teacher(x, training=False)), y, alpha,
        temperature)
    np.testing.assert_allclose(float(ops.convert_to_numpy(loss)), expected,
                               rtol=1e-5)


def test_staged_distillation_trains_the_student_only():
    student, teacher = models()
    teacher_variables = teacher.trainable_weights
    teacher_weights = [ops.convert_to_numpy(w) for w in teacher_variables]
    distillation = StudentDistillation(student, teacher, alpha=0.7,
                                       temperature=2.0,
                                       stop_distillation_step=2)
    distillation.compile(optimizer=keras.optimizers.SGD(0.1),
                         metrics=[Perplexity(padding_id=0)],
                         jit_compile=True)
    student_weights = [ops.convert_to_numpy(w) for w in
                       student.trainable_weights]
    x, y = data()
    weights = []
    for step in range(4):
        weights.append(float(ops.convert_to_numpy(
            distillation.distillation_weight())))
        distillation.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    np.testing.assert_allclose(weights, [0.7, 0.7, 0.0, 0.0], rtol=1e-6)
    assert len(teacher_variables) > 10
    for before, after in zip(teacher_weights, teacher_variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(after), before)
    assert any(not np.allclose(before, ops.convert_to_numpy(after))
               for before, after in zip(student_weights,
                                        student.trainable_weights))
    # After the stop, the loss is the student's own (CE + MoE losses).
    x, y = data(seed=1)
    student_logits = student(x, training=False)
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(distillation.compute_loss(
            x, y, student_logits, training=False))),
        float(ops.convert_to_numpy(student.compute_loss(
            x, y, student_logits, training=False))), rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": 1.5}, "alpha"),
    ({"alpha": -0.1}, "alpha"),
    ({"temperature": 0.0}, "temperature"),
    ({"stop_distillation_step": 0}, "stop_distillation_step"),
])
def test_rejects_bad_arguments(kwargs, message):
    student, teacher = models()
    with pytest.raises(ValueError, match=message):
        StudentDistillation(student, teacher, **kwargs)


def test_rejects_a_sampled_softmax_student():
    _, teacher = models()
    student = MoELanguageModel.from_preset("tiny_moe", num_sampled=8)
    with pytest.raises(ValueError, match="num_sampled"):
        StudentDistillation(student, teacher)
