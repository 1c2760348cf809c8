import pytest

from tests.helpers import image_part
from vision_agent.backends.llama_cpp.chat_format import choose_template, render_prompt
from vision_agent.core.messages import Message
from vision_agent.core.prompts import chat_template
from vision_agent.errors import ConfigError

MARKER = "<__media__>"


def render(template, messages):
    return render_prompt(messages, template, media_marker=MARKER, bos_token="<s>", eos_token="</s>")


@pytest.fixture
def image():
    return image_part(source="x")


def test_vicuna_puts_image_before_text_and_ends_with_assistant(image):
    prompt = render(chat_template("vicuna"), [Message.system("Be brief."), Message.user("What is it?", [image])])
    assert prompt == f"Be brief.\nUSER: {MARKER}\nWhat is it?\nASSISTANT:"


def test_vicuna_multi_turn_closes_assistant_turns_with_eos(image):
    prompt = render(
        chat_template("vicuna"),
        [
            Message.user("What is it?", [image]),
            Message.assistant("A square."),
            Message.user("Colour?"),
        ],
    )
    assert prompt == f"USER: {MARKER}\nWhat is it?\nASSISTANT: A square.</s>\nUSER: Colour?\nASSISTANT:"


def test_mistral_and_chatml(image):
    mistral = render(chat_template("mistral"), [Message.system("Sys."), Message.user("Q?", [image])])
    assert mistral == f"[INST] Sys.\n\n{MARKER}\nQ? [/INST]"
    chatml = render(chat_template("chatml"), [Message.user("Q?", [image])])
    assert chatml == f"<|im_start|>user\n{MARKER}\nQ?<|im_end|>\n<|im_start|>assistant\n"


def test_choose_template():
    assert choose_template("auto", "{{ x }}") == "{{ x }}"
    assert choose_template("auto", None) == chat_template("vicuna")
    assert choose_template("chatml", "{{ x }}") == chat_template("chatml")  # a forced family wins
    with pytest.raises(ConfigError, match="no chat template"):
        choose_template("gguf", None)


def test_a_template_is_compiled_once_and_renders_the_same_as_its_text(image):
    from vision_agent.backends.llama_cpp.chat_format import compile_template

    text = chat_template("chatml")
    compiled = compile_template(text)
    assert compile_template(text) is compiled  # cached: read_summary's check and the backend share it
    messages = [Message.system("Sys."), Message.user("Q?", [image])]
    assert render(compiled, messages) == render(text, messages)


def test_template_errors_are_a_bad_model_file_at_load_and_a_backend_error_at_render():
    from vision_agent.backends.llama_cpp.chat_format import compile_template
    from vision_agent.errors import BackendError, ModelFileError

    with pytest.raises(ModelFileError, match="syntax error on line 1"):
        compile_template("{% if %}")
    with pytest.raises(BackendError, match="refused this conversation: no system role"):
        render("{{ raise_exception('no system role') }}", [Message.user("hi")])
    with pytest.raises(BackendError, match="UndefinedError"):
        render("{{ messages[0].content.nope.deeper }}", [Message.assistant("hi")])
