//! Just enough of PostgreSQL's lexer to find where each statement of a file starts:
//! a file that ends or opens a transaction itself (`COMMIT`, `BEGIN`, ...) would break
//! the one transaction a file is applied in, so it is refused before anything runs.
//! Strings, quoted names, dollar-quoted bodies, comments and `BEGIN ATOMIC ... END`
//! bodies are skipped as psql skips them.

/// A statement's first two words (upper-cased keywords or plain names; quoted names
/// and literals are skipped) and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub words: Vec<String>,
    pub line: usize,
}

/// The first statement that controls the transaction (its line and text), if any.
pub fn transaction_control(sql: &str) -> Option<(usize, String)> {
    statements(sql).into_iter().find_map(|statement| {
        let first = statement.words.first().map(String::as_str);
        let second = statement.words.get(1).map(String::as_str);
        let refused = match (first, second) {
            (Some("BEGIN" | "COMMIT" | "END" | "ABORT"), _) => true,
            (Some("START" | "PREPARE"), Some("TRANSACTION")) => true,
            // ROLLBACK TO SAVEPOINT stays inside the transaction.
            (Some("ROLLBACK"), second) => second != Some("TO"),
            _ => false,
        };
        refused.then(|| (statement.line, statement.words.join(" ")))
    })
}

/// The 1-based line and column of the 1-based character `position` of `text` (what a
/// server error's position counts).
pub fn line_and_column(text: &str, position: usize) -> (usize, usize) {
    let (mut line, mut column) = (1, 1);
    for c in text.chars().take(position.saturating_sub(1)) {
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

struct Scanner {
    chars: Vec<char>,
    at: usize,
    line: usize,
    out: Vec<Statement>,
    current: Option<Statement>,
    /// `BEGIN ATOMIC` bodies (and the `CASE`s in them) still open.
    depth: usize,
    parens: usize,
    /// The statement's first words, up to four (`CREATE OR REPLACE FUNCTION`).
    head: Vec<String>,
}

/// Every statement of `sql`, in order.
pub fn statements(sql: &str) -> Vec<Statement> {
    let mut scanner = Scanner {
        chars: sql.chars().collect(),
        at: 0,
        line: 1,
        out: Vec::new(),
        current: None,
        depth: 0,
        parens: 0,
        head: Vec::new(),
    };
    scanner.run();
    scanner.out
}

fn ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || !c.is_ascii()
}

fn ident_char(c: char) -> bool {
    ident_start(c) || c.is_ascii_digit() || c == '$'
}

impl Scanner {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.at + ahead).copied()
    }

    fn bump(&mut self) {
        if self.peek(0) == Some('\n') {
            self.line += 1;
        }
        self.at += 1;
    }

    fn run(&mut self) {
        while let Some(c) = self.peek(0) {
            match c {
                '-' if self.peek(1) == Some('-') => self.skip_line(),
                '/' if self.peek(1) == Some('*') => self.skip_block_comment(),
                ';' if self.depth == 0 => {
                    self.end_statement();
                    self.bump();
                }
                '\'' => {
                    self.start_statement();
                    self.skip_quoted('\'', false);
                }
                '"' => {
                    self.start_statement();
                    self.skip_quoted('"', false);
                }
                '$' if self.dollar_tag().is_some() => {
                    self.start_statement();
                    self.skip_dollar();
                }
                c if ident_start(c) => self.word(),
                c if c.is_whitespace() => self.bump(),
                _ => {
                    self.start_statement();
                    match c {
                        '(' => self.parens += 1,
                        ')' => self.parens = self.parens.saturating_sub(1),
                        _ => {}
                    }
                    self.bump();
                }
            }
        }
        self.end_statement();
    }

    fn start_statement(&mut self) {
        if self.current.is_none() {
            self.current = Some(Statement {
                words: Vec::new(),
                line: self.line,
            });
            self.head.clear();
        }
    }

    fn end_statement(&mut self) {
        if let Some(statement) = self.current.take() {
            self.out.push(statement);
        }
        self.depth = 0;
        self.parens = 0;
    }

    fn skip_line(&mut self) {
        while let Some(c) = self.peek(0) {
            if c == '\n' {
                break;
            }
            self.bump();
        }
    }

    /// `/* ... */`, nested as PostgreSQL nests them.
    fn skip_block_comment(&mut self) {
        let mut nesting = 0usize;
        while let Some(c) = self.peek(0) {
            if c == '/' && self.peek(1) == Some('*') {
                nesting += 1;
                self.bump();
            } else if c == '*' && self.peek(1) == Some('/') {
                nesting -= 1;
                self.bump();
                if nesting == 0 {
                    self.bump();
                    return;
                }
            }
            self.bump();
        }
    }

    /// A string or a quoted name; a doubled quote is one quote, and in an `E'...'`
    /// string a backslash escapes the next character.
    fn skip_quoted(&mut self, quote: char, backslash: bool) {
        self.bump();
        while let Some(c) = self.peek(0) {
            if backslash && c == '\\' {
                self.bump();
            } else if c == quote {
                if self.peek(1) == Some(quote) {
                    self.bump();
                } else {
                    self.bump();
                    return;
                }
            }
            self.bump();
        }
    }

    /// The tag of a dollar quote opening here (`$$` or `$tag$`), if one does: not a
    /// parameter (`$1`) and not inside a name (`a$b`).
    fn dollar_tag(&self) -> Option<String> {
        if self.at > 0 && self.chars.get(self.at - 1).is_some_and(|c| ident_char(*c)) {
            return None;
        }
        let mut tag = String::from("$");
        let mut i = 1;
        while let Some(c) = self.peek(i) {
            if c == '$' {
                tag.push('$');
                return Some(tag);
            }
            let ok = if i == 1 {
                ident_start(c)
            } else {
                ident_char(c) && c != '$'
            };
            if !ok {
                return None;
            }
            tag.push(c);
            i += 1;
        }
        None
    }

    fn skip_dollar(&mut self) {
        let Some(tag) = self.dollar_tag() else { return };
        let tag: Vec<char> = tag.chars().collect();
        for _ in 0..tag.len() {
            self.bump();
        }
        while self.peek(0).is_some() {
            if self.chars[self.at..].starts_with(&tag) {
                for _ in 0..tag.len() {
                    self.bump();
                }
                return;
            }
            self.bump();
        }
    }

    fn word(&mut self) {
        let escape = matches!(self.peek(0), Some('e' | 'E')) && self.peek(1) == Some('\'');
        self.start_statement();
        if escape {
            self.bump();
            self.skip_quoted('\'', true);
            return;
        }
        let mut word = String::new();
        while let Some(c) = self.peek(0).filter(|c| ident_char(*c)) {
            word.extend(c.to_uppercase());
            self.bump();
        }
        // As psql: in CREATE [OR REPLACE] FUNCTION|PROCEDURE, outside parentheses,
        // BEGIN opens a body (BEGIN ATOMIC), CASE nests in one, END closes either;
        // semicolons inside do not end the statement.
        if self.routine() && self.parens == 0 {
            match word.as_str() {
                "BEGIN" => self.depth += 1,
                "CASE" if self.depth > 0 => self.depth += 1,
                "END" if self.depth > 0 => self.depth -= 1,
                _ => {}
            }
        }
        if let Some(statement) = self.current.as_mut() {
            if statement.words.len() < 2 {
                statement.words.push(word.clone());
            }
        }
        if self.head.len() < 4 {
            self.head.push(word);
        }
    }

    fn routine(&self) -> bool {
        let head: Vec<&str> = self.head.iter().map(String::as_str).collect();
        matches!(
            head.as_slice(),
            ["CREATE", "FUNCTION" | "PROCEDURE", ..]
                | ["CREATE", "OR", "REPLACE", "FUNCTION" | "PROCEDURE", ..]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firsts(sql: &str) -> Vec<(String, usize)> {
        statements(sql)
            .into_iter()
            .map(|s| (s.words.join(" "), s.line))
            .collect()
    }

    #[test]
    fn splits_at_semicolons_outside_quotes_and_comments() {
        let sql = "CREATE TABLE a (x text default ';');\n\
                   -- COMMIT; in a comment\n\
                   /* BEGIN; /* nested; */ still; */ INSERT INTO a VALUES (E'\\';');\n\
                   SELECT \"odd;name\" FROM a;\n\
                   DO $body$ BEGIN COMMIT; END $body$;\n\
                   CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;\n\
                   SELECT $1;";
        assert_eq!(
            firsts(sql),
            [
                ("CREATE TABLE".into(), 1),
                ("INSERT INTO".into(), 3),
                // Quoted names are not words.
                ("SELECT FROM".into(), 4),
                ("DO".into(), 5),
                ("CREATE FUNCTION".into(), 6),
                ("SELECT".into(), 7),
            ]
        );
        assert_eq!(transaction_control(sql), None);
    }

    #[test]
    fn begin_atomic_bodies_are_one_statement() {
        let sql = "CREATE FUNCTION f(x int) RETURNS int LANGUAGE sql\n\
                   BEGIN ATOMIC\n  SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END;\n  SELECT 2;\nEND;\n\
                   SELECT 3;";
        assert_eq!(
            firsts(sql),
            [("CREATE FUNCTION".into(), 1), ("SELECT".into(), 6)]
        );
        assert_eq!(transaction_control(sql), None);
        // Only a routine's BEGIN opens a body.
        assert_eq!(
            firsts("CREATE TABLE t (begin int);\nCOMMIT;"),
            [("CREATE TABLE".into(), 1), ("COMMIT".into(), 2)]
        );
    }

    #[test]
    fn finds_transaction_control() {
        for (sql, line, what) in [
            ("CREATE TABLE a ();\nCOMMIT;", 2, "COMMIT"),
            ("begin;\nCREATE TABLE a ();", 1, "BEGIN"),
            ("SELECT 1;\n\n  start transaction;", 3, "START TRANSACTION"),
            ("SELECT 1; END", 1, "END"),
            ("ROLLBACK;", 1, "ROLLBACK"),
            ("PREPARE TRANSACTION 'x';", 1, "PREPARE TRANSACTION"),
            ("ABORT;", 1, "ABORT"),
        ] {
            assert_eq!(
                transaction_control(sql),
                Some((line, what.to_owned())),
                "{sql}"
            );
        }
        assert_eq!(
            transaction_control("SAVEPOINT a; ROLLBACK TO SAVEPOINT a; PREPARE q AS SELECT 1;"),
            None
        );
    }

    #[test]
    fn positions_become_lines() {
        let text = "SELECT 1;\nSELEC 2;\n";
        assert_eq!(line_and_column(text, 11), (2, 1));
        assert_eq!(line_and_column(text, 1), (1, 1));
        assert_eq!(line_and_column("é\nx", 3), (2, 1));
    }
}
