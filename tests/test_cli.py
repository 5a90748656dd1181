"The `labkit` command's conventions: dash-case options with underscore aliases, one example per command, quiet on a closed pipe, one-line errors"
import re
import shlex
import subprocess
import pytest
from fastcore.script import anno_parser
from conftest import REPO, labkit_cmd
from labkit.cli import COMMANDS, EXAMPLES, command_function, command_parser

@pytest.fixture(scope='module')
def parsers() -> dict:
    return {name: command_parser(name) for name in COMMANDS}

def _by_dest(parser) -> dict:
    return {a.dest: a for a in parser._actions if a.dest not in ('help', 'pdb', 'xtra')}

def test_every_command_keeps_its_arguments(parsers):
    "Same arguments, defaults, types and flags as fastcore's `anno_parser` gave, plus dash-case spellings"
    for name, parser in parsers.items():
        before, after = _by_dest(anno_parser(command_function(name))), _by_dest(parser)
        assert set(after) == set(before), name
        for dest, old in before.items():
            new = after[dest]
            assert (type(new), new.default, new.type, new.required, new.nargs, new.choices) == \
                   (type(old), old.default, old.type, old.required, old.nargs, old.choices), (name, dest)
            if old.option_strings:
                dashed = '--' + dest.replace('_', '-')
                assert new.option_strings == list(dict.fromkeys([dashed, '--' + dest])), (name, dest)
            else: assert new.option_strings == [], (name, dest)   # positional arguments unchanged

def test_help_shows_dash_case_and_the_example(parsers):
    for name, parser in parsers.items():
        text = parser.format_help()
        options = [s for a in parser._actions for s in a.option_strings]
        assert not [s for s in options if '_' in s and re.search(re.escape(s) + r'(?![\w-])', text)], name
        assert all(s in text for s in options if '_' not in s), name
        assert text.rstrip().endswith(f"example: {EXAMPLES[name]}"), name

def test_every_example_parses_with_its_command(parsers):
    assert set(EXAMPLES) == set(COMMANDS)
    for name, parser in parsers.items():
        words = shlex.split(EXAMPLES[name])
        assert words[:2] == ['labkit', name], name
        used = [w.split('=')[0] for w in words[2:] if w.startswith('-')]
        known = {s for a in parser._actions for s in a.option_strings if '_' not in s}
        assert set(used) <= known, (name, set(used) - known)   # dash-case options the command has
        parser.parse_args(words[2:])                            # and a command line the parser accepts

def test_underscore_aliases_and_equals_form(parsers):
    serve, detect = parsers['serve'], parsers['detect']
    for argv in (['--admin-token-file', 't'], ['--admin_token_file', 't'], ['--admin-token-file=t'], ['--admin_token_file=t']):
        assert serve.parse_args(argv).admin_token_file == 't', argv
    args = detect.parse_args(['in', 'out', '--conf=0.5', '--overwrite'])
    assert (args.src, args.dst, args.conf, args.overwrite, args.quiet, args.batch) == ('in', 'out', 0.5, True, False, 16)
    assert parsers['train-detector'].parse_args(['--n_train', '7', '--n-val=3']).n_train == 7

def test_option_alias_works_through_the_console_script():
    r = subprocess.run(labkit_cmd('docs', '--out_dir', '_docs', '--bogus'), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown option '--bogus'" in r.stderr and 'out_dir' not in r.stderr, r.stderr

@pytest.mark.parametrize('argv', [('--help',), ('serve', '--help'), ('detect', '--help'), ('student', 'nbs', 'OUT')])
def test_closed_pipe_exits_quietly(argv, tmp_path):
    "The reader is gone before the first write (of argparse, or of a command's own report): status 141 (as SIGPIPE), nothing on stderr"
    argv = [str(REPO/a) if a == 'nbs' else str(tmp_path/a) if a == 'OUT' else a for a in argv]
    proc = subprocess.Popen(labkit_cmd(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    try: err = proc.stderr.read(); proc.wait(timeout=300)
    finally: proc.kill()
    assert proc.returncode == 141 and err == '', (proc.returncode, err[-2000:])

def test_help_through_head_keeps_the_first_line():
    cmd = f"{shlex.join(labkit_cmd('--help'))} | head -1; {shlex.join(labkit_cmd('serve', '--help'))} | head -1"
    r = subprocess.run(['bash', '-c', cmd], capture_output=True, text=True, timeout=120)
    lines = r.stdout.splitlines()
    assert r.stderr == '' and len(lines) == 2, r
    assert lines[0] == 'usage: labkit COMMAND [options]   (labkit COMMAND --help for its options and an example)', r
    assert lines[1].startswith('usage: labkit serve [-h] [--port PORT]'), r

def test_unknown_option_is_one_line_with_the_closest():
    r = subprocess.run(labkit_cmd('serve', '--polcy-file=p.json'), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == '', r
    assert r.stderr.count('\n') == 1 and "unknown option '--polcy-file'; did you mean '--policy-file'?" in r.stderr, r.stderr

def test_unknown_command_is_one_line_with_the_closest():
    r = subprocess.run(labkit_cmd('sevre'), capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (2, '', "labkit: unknown command 'sevre'; did you mean 'serve'?\n"), r

def test_parse_errors_are_one_line(parsers, capsys):
    for argv, expected in ((['nbs'], 'the following arguments are required: out_dir'),
                           (['nbs', '_student', 'extra'], "unexpected argument 'extra'")):
        with pytest.raises(SystemExit) as exit_: parsers['student'].parse_args(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count('\n') == 1 and expected in err, (argv, err)
