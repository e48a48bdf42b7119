//! What `chunk send PATH...` sends: each PATH a file (sent under its base name) or a directory
//! (its regular files, walked in name order, sent under the directory's name and their path
//! inside it), all below `--dest` if given. What is neither a regular file nor a directory
//! (symbolic links inside a tree, FIFOs, devices, sockets) is skipped with the reason; a name
//! that cannot travel (not UTF-8) is refused for that file, and the rest goes on.

use std::path::{Component, Path, PathBuf};

use serde::Serialize;

/// One file to send: where it is, and the name it gets on the receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    /// `/`-separated, relative to the receiver's output directory; `Err` with the reason when
    /// the path has no name that can travel.
    pub name: Result<String, String>,
    /// A directory: offered after everything in it (so that its mtime is the last word), with
    /// its mode and mtime; an empty one arrives too.
    pub directory: bool,
    /// A symbolic link inside a tree, with its target: sent as a link (the receiver recreates
    /// it with `--links`).
    pub symlink: Option<String>,
    /// Standard input (`-`), sent as a stream.
    pub stream: bool,
}

/// Something under a PATH that is not sent, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// `--dest SUBDIR`: a relative path without `.`, `..` or empty components, as `/`-separated
/// text.
pub fn parse_dest(s: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for c in Path::new(s).components() {
        match c {
            Component::Normal(p) => parts.push(
                p.to_str()
                    .ok_or_else(|| format!("--dest {s:?}: not UTF-8"))?
                    .to_owned(),
            ),
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "--dest {s:?}: must be a path inside the receiver's directory (no `..`, not absolute)"
                ));
            }
        }
    }
    Ok(parts.join("/"))
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

/// The files under `paths`, and what is skipped. A PATH that is a symbolic link is followed
/// (the user named it); links inside a directory are not.
pub fn expand(paths: &[PathBuf], dest: &str) -> (Vec<Entry>, Vec<Skipped>) {
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(md) if md.is_dir() => {
                let base = std::fs::canonicalize(path)
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_owned()));
                match base.as_ref().and_then(|b| b.to_str()) {
                    Some(b) => walk(path, &join(dest, b), &mut entries, &mut skipped),
                    // `/`: its contents, straight under --dest.
                    None if base.is_none() => walk(path, dest, &mut entries, &mut skipped),
                    None => entries.push(Entry {
                        path: path.clone(),
                        name: Err("the directory's name is not UTF-8".into()),
                        directory: true,
                        symlink: None,
                        stream: false,
                    }),
                }
            }
            // A file, or something open_file refuses with its own message.
            _ => entries.push(Entry {
                path: path.clone(),
                name: match path.file_name().map(|n| n.to_str()) {
                    Some(Some(n)) => Ok(join(dest, n)),
                    Some(None) => Err("the file name is not UTF-8".into()),
                    None => Err("no file name".into()),
                },
                directory: false,
                symlink: None,
                stream: false,
            }),
        }
    }
    (entries, skipped)
}

/// Whether `target`, a link's target, seen from a link `depth` directories below the top of
/// its tree, stays inside the tree: relative, its `..` all before its first name (so that
/// climbing goes through real directories, never back out of another link) and never above
/// the top. Then every link that passes resolves inside, whatever links it goes through (each
/// of them passed too).
pub fn stays_inside(target: &str, depth: usize) -> bool {
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return false;
    }
    let mut up = 0usize;
    let mut named = false;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if named => return false,
            ".." => up += 1,
            _ => named = true,
        }
    }
    up <= depth
}

/// The tree under `dir`, then `dir` itself (named `prefix`; not when it is the receiver's
/// directory itself, `prefix` empty).
fn walk(dir: &Path, prefix: &str, entries: &mut Vec<Entry>, skipped: &mut Vec<Skipped>) {
    walk_inside(dir, prefix, 0, entries, skipped);
    if !prefix.is_empty() {
        entries.push(Entry {
            path: dir.to_owned(),
            name: Ok(prefix.to_owned()),
            directory: true,
            symlink: None,
            stream: false,
        });
    }
}

fn walk_inside(
    dir: &Path,
    prefix: &str,
    depth: usize,
    entries: &mut Vec<Entry>,
    skipped: &mut Vec<Skipped>,
) {
    let mut children: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(Result::ok).collect(),
        Err(e) => {
            skipped.push(Skipped {
                path: dir.display().to_string(),
                reason: format!("cannot read the directory: {e}"),
            });
            return;
        }
    };
    children.sort_by_key(|c| c.file_name());
    for c in children {
        let path = c.path();
        let skip = |skipped: &mut Vec<Skipped>, reason: &str| {
            skipped.push(Skipped {
                path: path.display().to_string(),
                reason: reason.into(),
            })
        };
        let Ok(ft) = c.file_type() else {
            skip(skipped, "cannot read its type");
            continue;
        };
        let name = c.file_name();
        let Some(name) = name.to_str() else {
            entries.push(Entry {
                path: path.clone(),
                name: Err("the file name is not UTF-8".into()),
                directory: ft.is_dir(),
                symlink: None,
                stream: false,
            });
            continue;
        };
        let name = join(prefix, name);
        if ft.is_dir() {
            walk_inside(&path, &name, depth + 1, entries, skipped);
            entries.push(Entry {
                path,
                name: Ok(name),
                directory: true,
                symlink: None,
                stream: false,
            });
        } else if ft.is_file() {
            entries.push(Entry {
                path,
                name: Ok(name),
                directory: false,
                symlink: None,
                stream: false,
            });
        } else if ft.is_symlink() {
            // A link within the tree travels as a link; one that leads out of it is not sent
            // (the receiver must not get a way out of its directory).
            match std::fs::read_link(&path)
                .ok()
                .and_then(|t| t.to_str().map(str::to_owned))
            {
                Some(t) if stays_inside(&t, depth) => entries.push(Entry {
                    path,
                    name: Ok(name),
                    directory: false,
                    symlink: Some(t),
                    stream: false,
                }),
                Some(_) => skip(
                    skipped,
                    "a symbolic link that points outside the tree: not sent",
                ),
                None => skip(
                    skipped,
                    "a symbolic link whose target cannot be read as UTF-8",
                ),
            }
        } else {
            skip(
                skipped,
                "not a regular file (a FIFO, a device or a socket): not sent",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_expands_to_its_files_under_its_name_and_dest() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        std::fs::create_dir_all(root.join("a/deep")).unwrap();
        std::fs::create_dir_all(root.join("b")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("a/x"), b"1").unwrap();
        std::fs::write(root.join("b/x"), b"2").unwrap();
        std::fs::write(root.join("a/deep/é.txt"), b"3").unwrap();
        std::os::unix::fs::symlink("x", root.join("a/link")).unwrap();
        std::os::unix::fs::symlink("../../x", root.join("a/out")).unwrap();
        let single = tmp.path().join("single.bin");
        std::fs::write(&single, b"4").unwrap();
        let (entries, skipped) = expand(&[root.clone(), single.clone()], "in/box");
        let names: Vec<_> = entries.iter().map(|e| e.name.clone().unwrap()).collect();
        assert_eq!(
            names,
            [
                "in/box/tree/a/deep/é.txt",
                "in/box/tree/a/deep",
                "in/box/tree/a/link",
                "in/box/tree/a/x",
                "in/box/tree/a",
                "in/box/tree/b/x",
                "in/box/tree/b",
                "in/box/tree/empty",
                "in/box/tree",
                "in/box/single.bin"
            ]
        );
        assert_eq!(entries.iter().filter(|e| e.directory).count(), 5);
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].reason.contains("outside the tree"),
            "{skipped:?}"
        );
        assert_eq!(entries[2].symlink.as_deref(), Some("x"));
        assert_eq!(expand(&[single], "").0[0].name, Ok("single.bin".into()));
    }

    #[test]
    fn a_link_target_stays_inside_only_if_its_dots_never_climb_above_the_top() {
        assert!(stays_inside("x", 0));
        assert!(stays_inside("../a/x.txt", 1));
        assert!(
            !stays_inside("./b/../c", 0),
            "`..` after a name could climb out of a link"
        );
        assert!(stays_inside("./b/c", 0));
        assert!(!stays_inside("../x", 0));
        assert!(!stays_inside("a/../../x", 0));
        assert!(!stays_inside("/etc/passwd", 3));
        assert!(!stays_inside("", 1));
    }

    #[test]
    fn dest_must_stay_inside() {
        assert_eq!(parse_dest("a/./b/").unwrap(), "a/b");
        assert_eq!(parse_dest(".").unwrap(), "");
        assert!(parse_dest("../x").is_err());
        assert!(parse_dest("/etc").is_err());
        assert!(parse_dest("a/../b").is_err());
    }
}
