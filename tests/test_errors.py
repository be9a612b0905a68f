"""Programming errors are bugs, not messages: only the user's errors (finetune.errors.UserError) become a
friendly message; anything else is logged with its traceback and shown as an internal error with a reference."""

from __future__ import annotations

import logging
import re

import pytest

from finetune.errors import INTERNAL_LOGGER, UserError


def test_every_project_error_type_is_a_user_error_and_keeps_its_base():
    from finetune.backends.hfjobs import JobError
    from finetune.cli import UsageError
    from finetune.config import ConfigError
    from finetune.data import DataError
    from finetune.hub import HubError
    from finetune.io import DiskFullError
    from finetune.memory import EstimateError
    from finetune.models import ModelError
    from finetune.runs import RunError
    from finetune.service import ServiceError
    from finetune.templates import TemplateError
    from finetune.train import TrainingError

    for cls in (ServiceError, ConfigError, RunError, DataError, HubError, EstimateError, JobError, ModelError,
                TemplateError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError), cls
    assert issubclass(DiskFullError, OSError) and issubclass(DiskFullError, UserError)
    assert issubclass(TrainingError, RuntimeError) and issubclass(TrainingError, UserError)
    assert issubclass(UsageError, UserError)


@pytest.mark.allow_internal_errors
def test_a_bug_in_a_handler_is_an_internal_error_with_a_reference_and_a_logged_traceback(no_internal_errors, caplog):
    import gradio as gr

    from finetune.ui.common import user_errors

    @user_errors
    def broken(cfg):
        return cfg.batch_size  # the AttributeError that once hid behind a friendly message

    with caplog.at_level(logging.ERROR, logger=INTERNAL_LOGGER), pytest.raises(gr.Error) as raised:
        broken(object())
    message = str(raised.value.message)
    found = re.fullmatch(r"internal error \(reference ([0-9a-f]+-\d+)\)", message)
    assert found, message
    assert "batch_size" not in message and "AttributeError" not in message  # no internals shown
    records = [r for r in no_internal_errors if found.group(1) in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.ERROR
    assert records[0].exc_info and records[0].exc_info[0] is AttributeError
    assert "batch_size" in logging.Formatter().format(records[0])  # the traceback is in the log line


@pytest.mark.allow_internal_errors
def test_a_bug_in_a_streaming_handler_is_an_internal_error_too(no_internal_errors):
    import gradio as gr

    from finetune.ui.common import user_errors

    @user_errors
    def stream():
        yield "first"
        {}["missing"]

    gen = stream()
    assert next(gen) == "first"
    with pytest.raises(gr.Error) as raised:
        next(gen)
    assert re.fullmatch(r"internal error \(reference [0-9a-f]+-\d+\)", raised.value.message)
    assert no_internal_errors and no_internal_errors[0].exc_info[0] is KeyError


def test_a_user_error_becomes_its_own_message(no_internal_errors):
    import gradio as gr

    from finetune.service import ServiceError
    from finetune.ui.common import user_errors

    @user_errors
    def refuse():
        raise ServiceError("no run 'x' among your runs; pick one from the run list")

    with pytest.raises(gr.Error) as raised:
        refuse()
    assert raised.value.message == "no run 'x' among your runs; pick one from the run list"
    assert no_internal_errors == []


def test_the_cli_prints_a_user_error_and_lets_a_bug_propagate(monkeypatch, capsys):
    from finetune import cli
    from finetune.data import DataError

    def fail_with(exc):
        def func(args):
            raise exc
        return func

    parser = cli.build_parser()
    args = parser.parse_args(["runs"])
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)

    args.func = fail_with(DataError("data.jsonl", 3, "'output' is empty"))
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "data.jsonl" in err and "Traceback" not in err

    args.func = fail_with(AttributeError("'RunConfig' object has no attribute 'batch_size'"))
    with pytest.raises(AttributeError):
        cli.main([])
