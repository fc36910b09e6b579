"""Identity-bearing backbones (the paper's start: a face-recognition network fine-tuned for the task).

``privsplit pretrain`` builds one (:mod:`privsplit.backbone.pretrain`), ``privsplit train --init``
fine-tunes the primary task from it (:mod:`privsplit.backbone.init`).
"""
from privsplit.backbone.teachers import TEACHERS, DlibTeacher, Teacher, teacher_descriptors

__all__ = ["TEACHERS", "Teacher", "DlibTeacher", "teacher_descriptors"]
