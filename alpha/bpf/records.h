/* Ring-buffer record layouts shared by sensor.bpf.c and mirrored by alpha/sensors/decode.py.
 *
 * Plain C on purpose: besides bcc, the unit tests compile this header with the host C compiler
 * and compare every sizeof/offsetof with the Python mirror, so the two cannot drift apart.
 * Every struct is naturally aligned with explicit padding, so there is no compiler-dependent
 * layout. Integer types (u8..u64, s32, s64) come from the includer.
 */
#ifndef QSC_RECORDS_H
#define QSC_RECORDS_H

/* Record kinds (rec_hdr.kind). */
#define KIND_EXEC 1
#define KIND_FORK 2
#define KIND_EXIT 3
#define KIND_OPEN 4
#define KIND_CHMOD 5
#define KIND_CHOWN 6
#define KIND_UNLINK 7
#define KIND_RENAME 8
#define KIND_PTRACE 9
#define KIND_CONNECT 10
#define KIND_ACCEPT 11
#define KIND_MEMFD 12
#define KIND_MODULE 13
#define KIND_BPF 14
#define KIND_SETID 15
#define KIND_MEMPROT 16
#define KIND_SOCKET 17
#define KIND_LINK 18
#define KIND_TCP_CLOSE 19
#define KIND_VM_WRITE 20
#define KIND_XATTR 21
#define KIND_NAMESPACE 22
#define KIND_UTIMES 23
#define KIND_ENFORCE 24
#define KIND_OPEN_RESOLVED 25
#define KIND_DUP 26
#define KIND_MAX 27

/* Which syscall produced a record (rec_hdr.syscall): our own numbering, so that userspace does
 * not depend on the architecture's syscall table. */
#define SC_NONE 0
#define SC_EXECVE 1
#define SC_EXECVEAT 2
#define SC_OPEN 3
#define SC_OPENAT 4
#define SC_OPENAT2 5
#define SC_CREAT 6
#define SC_CHMOD 7
#define SC_FCHMOD 8
#define SC_FCHMODAT 9
#define SC_FCHMODAT2 10
#define SC_CHOWN 11
#define SC_LCHOWN 12
#define SC_FCHOWN 13
#define SC_FCHOWNAT 14
#define SC_UNLINK 15
#define SC_UNLINKAT 16
#define SC_RENAME 17
#define SC_RENAMEAT 18
#define SC_RENAMEAT2 19
#define SC_PTRACE 20
#define SC_CONNECT 21
#define SC_ACCEPT 22
#define SC_ACCEPT4 23
#define SC_MEMFD_CREATE 24
#define SC_INIT_MODULE 25
#define SC_FINIT_MODULE 26
#define SC_BPF 27
#define SC_SETUID 28
#define SC_SETGID 29
#define SC_SETREUID 30
#define SC_SETREGID 31
#define SC_SETRESUID 32
#define SC_SETRESGID 33
#define SC_SETFSUID 34
#define SC_SETFSGID 35
#define SC_MMAP 36
#define SC_MPROTECT 37
#define SC_PKEY_MPROTECT 38
#define SC_SOCKET 39
#define SC_LINK 40
#define SC_LINKAT 41
#define SC_SYMLINK 42
#define SC_SYMLINKAT 43
#define SC_PROCESS_VM_WRITEV 44
#define SC_SETXATTR 45
#define SC_LSETXATTR 46
#define SC_FSETXATTR 47
#define SC_SETXATTRAT 48
#define SC_UNSHARE 49
#define SC_SETNS 50
#define SC_UTIMENSAT 51
#define SC_UTIMES 52
#define SC_UTIME 53
#define SC_DUP2 54
#define SC_DUP3 55

/* Per-CPU counters besides the per-kind loss array. */
#define CNT_FILTERED 0      /* dropped by an in-kernel filter (path, comm, family, request) */
#define CNT_EXEC_NO_STASH 1 /* exec seen without its execve entry (started before attach) */
#define CNT_MAX 2

#define PATH_LEN 256
#define ARGS_LEN 1024 /* argv bytes kept; one more argument of up to ARG_LEN may spill over */
#define ARG_LEN 256
#define MAX_ARGS 32
#define SOCKADDR_LEN 128
#define BPF_NAME_LEN 16
#define COMM_LEN 16

#define EXEC_F_ARGS_TRUNCATED 1
#define EXEC_F_NO_STASH 2

/* Process identity read from the task at exec (rec_exec.id_flags). */
#define ID_F_KERNEL 1 /* the fields below were read from the task (kernel layout known) */
#define ID_F_EXE_COMPLETE 2 /* the exe walk reached the root of the mount tree */
#define ID_F_EXE_PSEUDO 4 /* exe is a pseudo file with no directory (memfd:NAME) */
#define ID_F_EXE_DELETED 8 /* exe's dentry is unhashed: the file was deleted */
#define ID_F_EXE_TRUNCATED 16 /* more path components than fit */
#define ID_F_NO_EXE 32 /* the task has no mm or exe_file */
#define ID_F_LOGINUID 64 /* auid and sessionid were read (the kernel has audit) */

/* What fds 0-2 were at exec (rec_exec.stdio[].kind), read from the task's fd table. */
#define FD_UNKNOWN 0
#define FD_CLOSED 1
#define FD_FILE 2
#define FD_TTY 3
#define FD_PIPE 4
#define FD_INET 5
#define FD_INET6 6
#define FD_UNIX 7
#define FD_OTHER_SOCKET 8
#define EXE_LEN 512 /* exe component bytes kept; one more name of up to NAME_LEN may spill */
#define NAME_LEN 256
#define EXE_DEPTH 32
#define TTY_LEN 32
#define XATTR_NAME_LEN 64
#define EXIT_F_CODE_KNOWN 1
/* The environment at exec: entries whose name the env_names map holds are kept. */
#define ENV_LEN 512 /* kept entry bytes; one more entry of up to ENV_ENTRY_LEN may spill */
#define ENV_ENTRY_LEN 192
#define ENV_SCAN_LEN 4096 /* an entry longer than this ends the scan (ENV_F_INCOMPLETE) */
#define MAX_ENV 128
#define ENV_KEY_LEN 16
#define ENV_F_SCANNED 1 /* the environment was read from the new image */
#define ENV_F_INCOMPLETE 2 /* more entries than MAX_ENV, one too long, or unreadable */
#define ENV_F_TRUNCATED 4 /* kept entries did not all fit in env */
/* rec_path.resolve: the raw path was relative or not canonical: the opened file is named from
 * its fd at exit. KEEP: report it even if the resolved path passes no filter (relative_*). */
#define PATH_R_PENDING 1
#define PATH_R_KEEP 2

struct rec_hdr {
    u64 ts_ns; /* bpf_ktime_get_boot_ns(): CLOCK_BOOTTIME, the clock of /proc/PID/stat */
    u64 cgroup_id; /* cgroup v2 id: the inode number of the cgroup's directory */
    s64 ret; /* syscall return value; 0 for sched/task records */
    u32 kind;
    u32 syscall;
    u32 tid;
    u32 tgid;
    u32 uid; /* real uid/gid (bpf_get_current_uid_gid) */
    u32 gid;
    char comm[COMM_LEN];
}; /* 64 bytes */

struct rec_exec {
    struct rec_hdr hdr;
    u32 old_pid; /* the tid that called execve (differs from tgid for a non-leader thread) */
    u32 argc; /* arguments kept */
    u32 args_len; /* bytes used in args: NUL-separated */
    u32 flags; /* EXEC_F_* */
    s32 dirfd; /* execveat only */
    u32 at_flags; /* execveat only, e.g. AT_EMPTY_PATH */
    char filename[PATH_LEN]; /* bprm->filename, e.g. /dev/fd/3 for fexecve */
    /* The new image's identity, read from the task in sched_process_exec (ID_F_KERNEL). */
    u32 euid;
    u32 egid;
    u32 auid; /* loginuid ((u32)-1: unset) */
    u32 sessionid;
    u32 ppid; /* real_parent's tgid */
    u32 id_flags; /* ID_F_* */
    u32 exe_len; /* bytes used in exe */
    u32 exe_depth; /* path components in exe */
    char tty[TTY_LEN]; /* the controlling terminal's tty->name, e.g. pts0; empty: none */
    u64 cap_effective; /* the new image's capability sets */
    u64 cap_permitted;
    u32 env_count; /* entries scanned */
    u32 env_flags; /* ENV_F_* */
    u32 env_len; /* bytes used in env: NUL-separated NAME=value entries */
    u32 env_kept;
    char env[ENV_LEN + ENV_ENTRY_LEN];
    struct {
        u8 kind; /* FD_* */
        u8 _pad;
        u16 port; /* inet: the peer's port, network byte order */
        u32 _pad2;
        u8 addr[16]; /* inet: the peer's address (4 bytes for FD_INET) */
    } stdio[3];
    char exe[EXE_LEN + NAME_LEN]; /* mm->exe_file's path, NUL-separated names, leaf first */
    char args[ARGS_LEN + ARG_LEN];
}; /* variable length on the wire: ends after args_len bytes of args */

struct rec_fork {
    struct rec_hdr hdr; /* the parent */
    u32 child_pid;
    u32 _pad;
    u64 clone_flags;
};

struct rec_exit {
    struct rec_hdr hdr;
    s32 exit_code; /* the exit_group() argument when flags has EXIT_F_CODE_KNOWN */
    u32 flags;
};

/* open, chmod, chown, unlink, memfd_create (path = name), one path each. */
struct rec_path {
    struct rec_hdr hdr;
    s32 dfd; /* dirfd, or the fd of fchmod/fchown */
    u32 mode;
    u64 flags; /* open flags, AT_* flags, memfd flags */
    u32 uid; /* chown */
    u32 gid;
    u32 path_len; /* bytes of path including its NUL, 0 if unreadable */
    u32 resolve; /* PATH_R_*: in the kernel only, between entry and exit */
    char path[PATH_LEN];
}; /* variable length on the wire: ends after path_len bytes of path */

/* An open whose raw path was relative or not canonical (//, /./, /../): the file it opened,
 * named by walking its dentry at exit, is what the filters judged. */
struct rec_resolved {
    struct rec_hdr hdr;
    s32 dfd;
    u32 mode;
    u64 flags; /* open flags */
    u32 path_flags; /* ID_F_EXE_* of the dentry walk (COMPLETE, PSEUDO, DELETED, TRUNCATED) */
    u32 depth; /* components in path */
    char raw[PATH_LEN]; /* the path as the caller gave it */
    char path[PATH_LEN]; /* the file's absolute path */
};

/* rename, renameat, renameat2; link, linkat, symlink, symlinkat: two paths each. */
struct rec_two_paths {
    struct rec_hdr hdr;
    s32 olddfd; /* linkat: the dirfd of target; -1 for a symlink, whose text is stored as is */
    s32 newdfd;
    u32 flags; /* renameat2 / linkat flags */
    u32 _pad;
    char oldpath[PATH_LEN]; /* rename: the old name; link: the target (a symlink's text) */
    char newpath[PATH_LEN]; /* rename: the new name; link: the new link's path */
};

struct rec_ptrace {
    struct rec_hdr hdr;
    s64 request;
    s64 target;
    u64 addr;
    u64 data;
};

/* connect and accept: the peer address as the raw sockaddr the caller passed or received. */
struct rec_sock {
    struct rec_hdr hdr;
    s32 fd;
    u32 addrlen;
    u64 uaddr; /* accept: user pointers kept from entry to exit; meaningless to userspace */
    u64 ulen;
    u32 protocol; /* connect: the socket's sk_protocol read in the kernel (6 TCP, 17 UDP); 0 unknown */
    u32 _pad;
    u8 addr[SOCKADDR_LEN];
};

struct rec_module {
    struct rec_hdr hdr;
    s32 fd; /* finit_module */
    u32 flags;
    u64 len; /* init_module image length */
    u32 params_len;
    u32 _pad;
    char params[PATH_LEN];
};

struct rec_bpf {
    struct rec_hdr hdr;
    s32 cmd;
    u32 size;
    u32 prog_type; /* BPF_PROG_LOAD only */
    u32 insn_cnt;
    u32 prog_flags;
    u32 _pad;
    char prog_name[BPF_NAME_LEN];
};

/* setuid family: a0..a2 are the arguments in order ((u32)-1 means "unchanged"). */
struct rec_setid {
    struct rec_hdr hdr;
    u32 a0;
    u32 a1;
    u32 a2;
    u32 _pad;
};

struct rec_memprot {
    struct rec_hdr hdr;
    u64 addr;
    u64 len;
    u64 prot;
    u64 flags; /* mmap flags */
    s64 fd; /* mmap fd; pkey for pkey_mprotect */
};

/* socket(2) of a watched family; the return value (the fd) is in the header. */
struct rec_socket {
    struct rec_hdr hdr;
    s32 family;
    s32 type; /* with the SOCK_NONBLOCK/SOCK_CLOEXEC bits as passed */
    s32 protocol; /* as passed: AF_PACKET's is in network byte order */
    u32 _pad;
};

/* process_vm_writev(2): another process's memory written without ptrace. */
struct rec_vm_write {
    struct rec_hdr hdr; /* ret: bytes written */
    s64 target;
    u64 liovcnt;
    u64 riovcnt;
    u64 flags;
};

/* setxattr family, for names in the security. namespace (security.capability: file caps). */
struct rec_xattr {
    struct rec_hdr hdr;
    s32 dfd; /* fsetxattr: the fd; setxattrat: the dirfd; else AT_FDCWD */
    u32 size; /* value bytes */
    u32 flags; /* XATTR_CREATE / XATTR_REPLACE */
    u32 at_flags; /* setxattrat, lsetxattr: AT_SYMLINK_NOFOLLOW */
    char name[XATTR_NAME_LEN];
    char path[PATH_LEN]; /* empty for fsetxattr */
};

/* dup2/dup3 onto fds 0-2 that left an inet socket there: stdio redirected to the network, with
 * or without an exec after it. */
struct rec_dup {
    struct rec_hdr hdr;
    s32 oldfd;
    s32 newfd;
    u32 flags; /* dup3 flags (O_CLOEXEC) */
    u8 kind; /* FD_* of newfd after the call */
    u8 _pad;
    u16 port; /* the peer's port, network byte order */
    u8 addr[16]; /* the peer's address (4 bytes for FD_INET) */
};

/* unshare(2) with CLONE_NEW* flags, and setns(2). */
struct rec_ns {
    struct rec_hdr hdr;
    u64 flags; /* unshare: its flags; setns: nstype (0: any) */
    s32 fd; /* setns: the namespace (or pidfd) fd */
    u32 _pad;
};

/* utimensat/utimes/utime with explicit times (not "now"). The file is named by the path
 * argument, relative to `base` (the dirfd's or cwd's path, walked in the kernel), or is the
 * dirfd itself (futimens: no path): a `touch -d` that is gone before anyone looks is named. */
struct rec_utimes {
    struct rec_hdr hdr;
    s32 dfd;
    u32 at_flags;
    s64 atime_sec;
    s64 atime_nsec; /* UTIME_OMIT (1073741822) / UTIME_NOW (1073741823) as passed */
    s64 mtime_sec;
    s64 mtime_nsec;
    u32 base_flags; /* ID_F_EXE_* of the base walk; 0: no walk (absolute path) */
    u32 base_len;
    u32 base_depth;
    u32 path_len;
    char path[PATH_LEN];
    char base[EXE_LEN + NAME_LEN]; /* NUL-separated names, leaf first */
};

/* Enforcement: the kernel checks a rule with `action: kill` may name (enforce_cfg.checks). */
#define CHECK_MEMFD_EXEC 1 /* exec of a memfd */
#define CHECK_SOCKET_STDIO_EXEC 2 /* a shell or interpreter exec'd with stdio on an inet socket */
#define CHECK_VM_WRITE 4 /* process_vm_writev into another process */
#define ENFORCE_OFF 0
#define ENFORCE_DRY_RUN 1
#define ENFORCE_KILL 2

/* A process the kernel killed (or, in dry run, would have), at the tracepoint itself. */
struct rec_enforce {
    struct rec_hdr hdr;
    u32 check; /* CHECK_* */
    u32 mode; /* ENFORCE_DRY_RUN or ENFORCE_KILL */
    s32 signal; /* 9 */
    s32 result; /* bpf_send_signal's return: 0 sent; 0 in dry run */
};

#define TCPC_F_OWNER 1 /* hdr names the socket's owner, seen in its own syscall context */

/* A TCP socket's end (its move to TCP_CLOSE), with the kernel's final counters: every
 * connection is accounted, however short, not only those a sock_diag poll happened to see. */
struct rec_tcp_close {
    struct rec_hdr hdr; /* the owner (TCPC_F_OWNER); else the task the close ran under */
    u64 cookie; /* sk_cookie: sock_diag's cookie if the socket was ever dumped, else 0 */
    u64 bytes_acked; /* bytes sent and acknowledged */
    u64 bytes_received;
    u64 open_ns; /* when the owner was first seen (CLOCK_BOOTTIME), 0 if never */
    u32 segs_out;
    u32 segs_in;
    u16 family;
    u16 sport; /* host byte order */
    u16 dport;
    u16 oldstate; /* the state it closed from: SYN_SENT (2) for a refused or timed-out connect */
    u32 flags; /* TCPC_F_* */
    u32 _pad;
    u8 saddr[16]; /* 4 bytes for AF_INET */
    u8 daddr[16];
};

#endif /* QSC_RECORDS_H */
