//! Processes a dead postmaster leaves behind. Its children are re-parented to
//! `geodb instance` (PID 1 of the container, and a child subreaper elsewhere). Until
//! each notices, a backend can still commit transactions that no replica receives, and
//! once they exit nobody else reaps them. So they are killed, then reaped.

/// The fields of `/proc/PID/stat` this module needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStat {
    pub pid: i32,
    pub parent: i32,
    /// `R`, `S`, `D`, `Z` (exited, not reaped), ...
    pub state: char,
}

/// Parse `/proc/PID/stat`: `pid (comm) state ppid ...`. The command name may hold
/// spaces and parentheses, so the fields after it are found from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcessStat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once('(')?.0.trim().parse().ok()?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some(ProcessStat { pid, parent, state })
}

/// Children of `parent`, as `/proc` shows them now.
pub fn children_of(parent: i32) -> Vec<ProcessStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            name.to_str()?.parse::<i32>().ok()?;
            let text = std::fs::read_to_string(format!("/proc/{}/stat", name.to_str()?)).ok()?;
            parse_stat(&text)
        })
        .filter(|process| process.parent == parent)
        .collect()
}

/// Become the parent of orphaned descendants even when not PID 1 (a pod that shares
/// its process namespace, a test run on a host).
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl(2) with PR_SET_CHILD_SUBREAPER takes one integer argument.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Kill and reap every child of this process. Only call it when no child is wanted:
/// after PostgreSQL exited and before anything else is started. Returns how many
/// processes were left.
pub fn kill_and_reap_children() -> usize {
    let me = std::process::id() as i32;
    let mut left = 0;
    // A killed process may itself leave children (an archive command's shell), which
    // come to us in turn; a few rounds settle it.
    for _ in 0..10 {
        let children = children_of(me);
        if children.is_empty() {
            break;
        }
        for child in &children {
            if child.state != 'Z' {
                // SAFETY: kill(2) on our own child with a valid signal number.
                unsafe { libc::kill(child.pid, libc::SIGKILL) };
            }
        }
        for child in &children {
            // SAFETY: waitpid(2) on our own child; the status is not needed.
            unsafe { libc::waitpid(child.pid, std::ptr::null_mut(), 0) };
        }
        left += children.len();
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_backend_line() {
        let text = "4242 (postgres) S 17 4242 4242 0 -1 4194560 870 0 0 0 0 0 0 0 20 0 1 0";
        assert_eq!(
            parse_stat(text),
            Some(ProcessStat {
                pid: 4242,
                parent: 17,
                state: 'S'
            })
        );
    }

    #[test]
    fn command_names_with_spaces_and_parentheses_do_not_shift_fields() {
        let text = "7 (a (b) c) Z 1 7 7 0";
        assert_eq!(
            parse_stat(text),
            Some(ProcessStat {
                pid: 7,
                parent: 1,
                state: 'Z'
            })
        );
    }

    #[test]
    fn truncated_lines_are_refused() {
        assert_eq!(parse_stat("7 (postgres)"), None);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("x (postgres) S 1"), None);
    }

    #[test]
    fn lists_a_child_of_this_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let seen = children_of(me);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(seen.iter().any(|p| p.pid == child.id() as i32), "{seen:?}");
    }
}
