from charlstm.analysis.corpus_stats import corpus_stats


def test_stats_count_what_the_file_holds(tmp_path):
    path = tmp_path / "odd.txt"
    path.write_bytes("\ufeffab\r\nab\r\nz\x07\u200b".encode("utf-8"))
    stats = corpus_stats([path])
    assert stats.bytes == len(path.read_bytes())
    assert stats.chars == 12 and stats.distinct == 8
    assert stats.rarest[0] == ("\x07", 1)
    assert stats.line_ending_style == "CRLF" and stats.files_with_bom == 1
    assert stats.controls == {"\x07": 1}
    assert set(stats.invisible) == {"\ufeff", "\u200b"}
    assert stats.suggested_parameters == stats.chars and stats.closest_preset == "tiny"


def test_stats_of_a_folder_note_mixed_endings_and_skipped_files(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"one\ntwo\n")
    (tmp_path / "b.txt").write_bytes(b"three\r\n")
    (tmp_path / "c.bin").write_bytes(b"\x00\x00")
    stats = corpus_stats([tmp_path])
    assert stats.files == 2 and [s.path.name for s in stats.skipped] == ["c.bin"]
    assert stats.line_ending_style == "mixed (LF 2, CRLF 1)"


def test_corpus_stats_command_prints_a_table(tmp_path, run_main):
    (tmp_path / "a.txt").write_text("hello world\n")
    done = run_main("corpus", "stats", "a.txt", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "distinct" in done.stdout and "rule of thumb" in done.stdout
