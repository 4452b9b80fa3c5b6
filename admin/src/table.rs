//! Aligned plain-text tables for the admin CLI.

/// How a column's cells line up.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Align {
    Left,
    /// Numbers, so their digits line up.
    Right,
}

/// Renders `rows` under `columns` (name, alignment), two spaces between columns, no trailing
/// spaces. Rows shorter than the header are padded with empty cells.
pub fn render(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns
        .iter()
        .map(|(name, _)| name.chars().count())
        .collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = columns.iter().map(|(name, _)| (*name).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, ((_, align), width)) in columns.iter().zip(&widths).enumerate() {
            let cell = row.get(i).map(String::as_str).unwrap_or("");
            let pad = width.saturating_sub(cell.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            match align {
                Align::Left => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let text = render(
            &[
                ("NAME", Align::Left),
                ("SIZE", Align::Right),
                ("HOST", Align::Left),
            ],
            &[
                vec!["s1".into(), "5".into(), "127.0.0.1:5433".into()],
                vec!["shard_two".into(), "120".into(), "h".into()],
            ],
        );
        assert_eq!(
            text,
            "NAME       SIZE  HOST\n\
             s1            5  127.0.0.1:5433\n\
             shard_two   120  h\n"
        );
    }

    #[test]
    fn short_rows_and_empty_tables() {
        assert_eq!(
            render(&[("A", Align::Left), ("B", Align::Right)], &[]),
            "A  B\n"
        );
        let text = render(
            &[("A", Align::Left), ("B", Align::Right)],
            &[vec!["long".into()]],
        );
        assert_eq!(text, "A     B\nlong\n");
    }
}
