"""Early stopping waits while the validation loss still falls, and a resumed run starts from the wait it
had (segpipe/training/callbacks.py ResumedEarlyStopping, segpipe/training/loop.py _best_and_wait)."""
from __future__ import annotations

import pandas as pd
import pytest

from segpipe.training.callbacks import ResumedEarlyStopping
from segpipe.training.loop import _best_and_wait

# A sparse class on a CamVid cut: the first epoch's predict-everything scores the class share, the next
# epochs predict nothing while the loss falls; from epoch 8 the loss stalls too.
STUCK = [(0.014, 1.56), (0.0001, 1.42), (0.003, 1.27), (0.0, 1.22), (0.0, 1.19), (0.0, 1.17), (0.0, 1.15),
         (0.0, 1.16), (0.0, 1.18), (0.0, 1.17), (0.0, 1.16), (0.0, 1.19)]


class FakeModel:
    stop_training = False


def replay(epochs, *, patience, best=None, wait=0, best_loss=None, first=0):
    stopping = ResumedEarlyStopping(best=best, wait=wait, loss="val_loss", best_loss=best_loss,
                                    monitor="val_iou", mode="max", patience=patience)
    stopping.set_model(FakeModel())
    stopping.on_train_begin()
    for epoch, (iou, loss) in enumerate(epochs, start=first):
        stopping.on_epoch_end(epoch, {"val_iou": iou, "val_loss": loss})
        if stopping.model.stop_training:
            return stopping, epoch + 1
    return stopping, None


def test_a_run_whose_loss_still_falls_is_not_stopped():
    # Keras' own would stop after epoch 4 (best epoch 1, patience 3); the loss fell until epoch 7.
    stopping, stopped_after = replay(STUCK, patience=3)
    assert stopped_after == 10 and stopping.best == 0.014 and stopping.best_loss == 1.15


def test_a_run_whose_score_and_loss_both_stall_is_stopped():
    epochs = [(0.5, 1.0), (0.6, 0.9), (0.55, 0.95), (0.58, 0.92), (0.59, 0.91), (0.7, 0.95)]
    assert replay(epochs, patience=3)[1] == 5
    assert replay(epochs, patience=4)[1] is None  # epoch 6 improved the score


@pytest.mark.parametrize("cut", range(1, 10))  # the uninterrupted run stops after epoch 10
def test_the_wait_rebuilt_from_the_history_is_the_one_the_run_had(cut):
    """A run killed after `cut` epochs resumes with the best values and wait it had, and stops where the
    uninterrupted run stops."""
    before, stopped_early = replay(STUCK[:cut], patience=3)
    assert stopped_early is None
    history = pd.DataFrame({"epoch": range(cut), "val_iou": [e[0] for e in STUCK[:cut]],
                            "val_loss": [e[1] for e in STUCK[:cut]]})
    best, best_loss, wait = _best_and_wait(history, monitor="val_iou", loss="val_loss", phase_start=0)
    assert (best, best_loss, wait) == (before.best, before.best_loss, before.wait)
    _, stopped_after = replay(STUCK[cut:], patience=3, best=best, wait=wait, best_loss=best_loss, first=cut)
    assert stopped_after == 10
