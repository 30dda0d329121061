"""Distilling a trained MoE teacher into a smaller student (DeepSpeed's
Mixture-of-Students)."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config
from sgmoe.models.moe_model import plus_auxiliary_losses
from sgmoe.models.perplexity import token_weights


@keras.saving.register_keras_serializable(package="sgmoe")
class StudentDistillation(keras.Model):
    """Trains `student` on the labels and on a frozen `teacher`'s outputs.

    Mixture-of-Students (Rajbhandari et al. 2022, DeepSpeed-MoE,
    arXiv:2201.05596, §5): a student with fewer layers (and possibly fewer
    experts) learns from the MoE teacher with the loss

        L = (1 - a) * CE(labels, student) + a * T^2 * KL(p_T || q_T)
            + the student's auxiliary (MoE balancing) losses,

    where p_T and q_T are the teacher's and the student's softmax at
    temperature T (Hinton et al. 2015, arXiv:1503.02531), both means over
    the target tokens that are not padding. DeepSpeed found that keeping
    the KD term to the end hurts the student, and switched it off part-way
    ("staged KD"): `a` is `alpha` for the first `stop_distillation_step`
    training steps and 0 after (counted in `distillation_step`).

    Both models map the same inputs to logits over the same vocabulary
    ([..., V]) in inference; the student must compute its logits in
    training too (no sampled softmax). The teacher runs with
    training=False and is never updated. Evaluation and prediction are the
    student's; save `distillation.student` when done.

    Args:
        student: the model to train, e.g. a `MoELanguageModel` with fewer
            LSTM layers than the teacher.
        teacher: the trained model, same inputs and vocabulary.
        alpha: a, the weight of the KD term, in [0, 1].
        temperature: T > 0.
        stop_distillation_step: training steps with the KD term (a
            positive integer); None distills to the end.
        padding_id: target id left out of both terms; None means the
            student's `padding_id` attribute, if it has one.
        **kwargs: base `keras.Model` arguments.

    Example:

    distillation = StudentDistillation(student, teacher, alpha=0.5,
                                       stop_distillation_step=2000)
    distillation.compile(optimizer="adam", metrics=[Perplexity()])
    distillation.fit(train_data, epochs=...)
    distillation.student.save_to_preset("/tmp/student")
    """

    def __init__(self, student, teacher, alpha=0.5, temperature=1.0,
                 stop_distillation_step=None, padding_id=None, **kwargs):
        super().__init__(**kwargs)
        if getattr(student, "num_sampled", None) is not None:
            raise ValueError(
                "`student` must compute its logits in training: distill "
                "into a model without `num_sampled`, received num_sampled="
                f"{student.num_sampled}.")
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.alpha = _validation.check_non_negative_float("alpha", alpha)
        if self.alpha > 1.0:
            raise ValueError(
                f"`alpha` must be in [0, 1], received alpha={alpha!r}.")
        self.temperature = _validation.check_positive_float("temperature",
                                                            temperature)
        self.stop_distillation_step = (
            None if stop_distillation_step is None else
            _validation.check_positive_int("stop_distillation_step",
                                           stop_distillation_step))
        self.padding_id = (padding_id if padding_id is not None
                           else getattr(student, "padding_id", None))
        # Training steps taken (a model variable, so a checkpoint resumes
        # the schedule of `a`; the optimizer's own counter cannot be read
        # in a JAX loss).
        self.distillation_step = self.add_weight(
            name="distillation_step", shape=(), dtype="int32",
            initializer="zeros", trainable=False)

    def build(self, input_shape=None):
        for model in (self.student, self.teacher):
            if not model.built:
                model.build(input_shape)

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def distillation_weight(self):
        """a at the current training step (a float32 scalar tensor)."""
        if self.stop_distillation_step is None:
            return ops.convert_to_tensor(self.alpha, "float32")
        return ops.where(
            ops.less(self.distillation_step, self.stop_distillation_step),
            self.alpha, 0.0)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        student_logits = ops.cast(y_pred, "float32")
        teacher_logits = ops.stop_gradient(ops.cast(
            self.teacher(x, training=False), "float32"))
        if teacher_logits.shape[-1] != student_logits.shape[-1]:
            raise ValueError(
                "The teacher and the student must share a vocabulary: "
                f"logits over {teacher_logits.shape[-1]} and "
                f"{student_logits.shape[-1]} ids.")
        weights = token_weights(y, self.padding_id, sample_weight)
        total = ops.sum(weights)
        cross_entropy = ops.divide_no_nan(ops.sum(
            keras.losses.sparse_categorical_crossentropy(
                y, student_logits, from_logits=True) * weights), total)
        t = self.temperature
        teacher_log_p = ops.log_softmax(teacher_logits / t, axis=-1)
        student_log_q = ops.log_softmax(student_logits / t, axis=-1)
        kl = ops.sum(ops.exp(teacher_log_p)
                     * (teacher_log_p - student_log_q), axis=-1)
        distillation = t * t * ops.divide_no_nan(ops.sum(kl * weights), total)
        a = self.distillation_weight()
        if training:
            self.distillation_step.assign_add(1)
        loss = (1.0 - a) * cross_entropy + a * distillation
        return plus_auxiliary_losses(loss, self.student.losses)

    def get_config(self):
        return {**super().get_config(),
                **constructor_config(self, StudentDistillation)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for name in ("student", "teacher"):
            config[name] = keras.saving.deserialize_keras_object(
                config[name])
        return cls(**config)
