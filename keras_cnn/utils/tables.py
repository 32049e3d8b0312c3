"""Aligned text tables, for everything the package prints as one (model summaries, search results, reports)."""

RED, RESET = "\033[31m", "\033[0m"


def format_table(header, rows, *, right=(), rule=False, red_rows=()):
    """`header` and `rows` (sequences of cells, each shown with `str`) as aligned text, one line per row.

    Columns are as wide as their widest cell and two spaces apart, trailing spaces stripped; cells of the
    columns whose indices are in `right` are right-aligned (numbers), the others left-aligned. `rule` puts a
    line of dashes under the header; the rows whose indices (0 = the first row after the header) are in
    `red_rows` are printed in red with ANSI codes, for a terminal.
    """
    lines = [[str(cell) for cell in line] for line in (header, *rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = []
    for number, line in enumerate(lines):
        cells = [cell.rjust(width) if i in right else cell.ljust(width)
                 for i, (cell, width) in enumerate(zip(line, widths))]
        out = "  ".join(cells).rstrip()
        text.append(f"{RED}{out}{RESET}" if number - 1 in red_rows else out)
    if rule:
        text.insert(1, "-" * len(text[0]))
    return "\n".join(text)
