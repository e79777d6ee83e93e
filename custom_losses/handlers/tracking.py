"""The MLflow adapter: MONAI's MLflow handler reading the 2D bundles' batch outputs."""

from __future__ import annotations

from ignite.engine import Engine, Events


def _as_decollated(output_transform):
    def read_batch_output(output):
        return output_transform([output] if isinstance(output, dict) else output)

    return read_batch_output


class TrackingReadsBatchOutput:
    """Let MONAI's experiment tracking (``--tracking mlflow``) read a trainer that post-processes whole batches.

    MONAI's default MLflow settings read the loss with ``from_engine(["loss"], first=True)``, written for
    decollated outputs (a list of items); with ``decollate`` false the output is one dict and that read
    returns a tuple, which MLflow rejects. At the start of a run this wraps the ``output_transform`` of every
    ``MLFlowHandler`` attached to the engine so it sees the batch dict as a one-item list. Without
    tracking it does nothing.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from monai.handlers import MLFlowHandler

        for registered in engine._event_handlers.values():  # ignite keeps no public list of handlers
            for handler, *_ in registered:
                tracker = getattr(handler, "__self__", None)
                if isinstance(tracker, MLFlowHandler) and not getattr(tracker, "_reads_batch_output", False):
                    tracker.output_transform = _as_decollated(tracker.output_transform)
                    tracker._reads_batch_output = True
