/* QSC Alpha eBPF sensor: syscall, sched and task tracepoints into one ring buffer.
 *
 * Not compiled as is: alpha.sensors.ebpf.render_program() prepends the configuration as
 * #defines (own tgid, enabled probes, tracepoints present on this kernel, path/comm filters
 * rendered as macros) and inlines records.h. Tracepoints only: the target kernels may have
 * CONFIG_KPROBES off. bcc compiles against the packaged headers, which need not match the
 * running kernel's layout, so no kernel struct is read through them: the few task fields read
 * at exec go through offsets taken from the running kernel's BTF (KERNEL_LAYOUT); everything
 * else comes from helpers and tracepoint arguments.
 *
 * Syscalls are recorded at entry into a per-thread stash (the arguments, paths read while the
 * caller's memory is certainly valid) and emitted at exit with the return value, so a denied
 * open of /etc/shadow and a failed finit_module are visible as such.
 *
 * Loss accounting: every failed ring-buffer output or reservation increments lost[kind], a
 * per-CPU array that userspace sums.
 */

#include "records.h"

#define QSC_O_WRONLY 01
#define QSC_O_RDWR 02
#define QSC_O_CREAT 0100
#define QSC_O_TRUNC 01000
#define QSC_O_APPEND 02000
#define QSC_WRITE_FLAGS (QSC_O_WRONLY | QSC_O_RDWR | QSC_O_CREAT | QSC_O_TRUNC | QSC_O_APPEND)
#define QSC_S_ISUID 04000
#define QSC_S_ISGID 02000
#define QSC_S_IWOTH 00002
#define QSC_CLONE_THREAD 0x00010000
#define QSC_PROT_WRITE 0x2
#define QSC_PROT_EXEC 0x4
#define QSC_AF_UNIX 1
#define QSC_AF_INET 2
#define QSC_AF_INET6 10
#define QSC_BPF_PROG_LOAD 5
#define QSC_AT_FDCWD -100
/* CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME */
#define QSC_CLONE_NEW_MASK 0x7E020080ULL
#define QSC_UTIME_NOW ((1L << 30) - 1)
#define QSC_UTIME_OMIT ((1L << 30) - 2)

struct inflight {
    union {
        struct rec_hdr hdr;
        struct rec_path path;
        struct rec_two_paths two;
        struct rec_ptrace ptrace;
        struct rec_sock sock;
        struct rec_module module;
        struct rec_bpf bpf;
        struct rec_setid setid;
        struct rec_memprot memprot;
        struct rec_socket newsock;
        struct rec_vm_write vm;
        struct rec_xattr xattr;
        struct rec_ns ns;
        struct rec_dup dup;
    };
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(lost, u64, KIND_MAX);
BPF_PERCPU_ARRAY(counters, u64, CNT_MAX);
/* Records are bigger than the 512-byte BPF stack: build them in per-CPU scratch space. */
BPF_PERCPU_ARRAY(scratch, struct inflight, 1);
/* LRU: a thread that never returns from a syscall cannot leak an entry forever. */
BPF_TABLE("lru_hash", u32, struct inflight, inflight, INFLIGHT_ENTRIES);
#ifdef PROBE_EXEC
BPF_PERCPU_ARRAY(exec_scratch, struct rec_exec, 1);
BPF_TABLE("lru_hash", u32, struct rec_exec, exec_stash, EXEC_ENTRIES);
BPF_TABLE("lru_hash", u32, s32, exit_codes, EXEC_ENTRIES);
#endif

static __always_inline void count_lost(u32 kind) {
    u64 *v = lost.lookup(&kind);
    if (v)
        *v += 1;
}

static __always_inline void count(u32 idx) {
    u64 *v = counters.lookup(&idx);
    if (v)
        *v += 1;
}

static __always_inline int is_self(void) {
    return (bpf_get_current_pid_tgid() >> 32) == SELF_TGID;
}

static __always_inline void fill_hdr(struct rec_hdr *h, u32 kind, u32 sc) {
    u64 id = bpf_get_current_pid_tgid();
    u64 ug = bpf_get_current_uid_gid();
    h->ts_ns = bpf_ktime_get_boot_ns();
    h->cgroup_id = bpf_get_current_cgroup_id();
    h->ret = 0;
    h->kind = kind;
    h->syscall = sc;
    h->tid = (u32)id;
    h->tgid = id >> 32;
    h->uid = (u32)ug;
    h->gid = ug >> 32;
    bpf_get_current_comm(h->comm, sizeof(h->comm));
}

static __always_inline struct inflight *scratch_get(void) {
    u32 zero = 0;
    return scratch.lookup(&zero);
}

/* Header filled last, after the cheap filters, so dropped syscalls cost little. Returns 0. */
static __always_inline int stash(struct inflight *r, u32 kind, u32 sc, int comm_filter) {
    fill_hdr(&r->hdr, kind, sc);
    if (comm_filter && IGNORE_COMM(r->hdr.comm)) {
        count(CNT_FILTERED);
        return 0;
    }
    u32 tid = r->hdr.tid;
    inflight.update(&tid, r);
    return 0;
}

static __always_inline int output(struct inflight *r, u32 kind) {
    u64 size = sizeof(struct rec_hdr);
    if (kind == KIND_OPEN || kind == KIND_CHMOD || kind == KIND_CHOWN || kind == KIND_UNLINK ||
        kind == KIND_MEMFD) {
        /* Variable length: only the used part of the path crosses the ring. */
        u32 n = r->path.path_len;
        if (n > PATH_LEN)
            n = PATH_LEN;
        size = offsetof(struct rec_path, path) + n;
    } else if (kind == KIND_RENAME || kind == KIND_LINK) {
        size = sizeof(struct rec_two_paths);
    } else if (kind == KIND_PTRACE) {
        size = sizeof(struct rec_ptrace);
    } else if (kind == KIND_CONNECT || kind == KIND_ACCEPT) {
        size = sizeof(struct rec_sock);
    } else if (kind == KIND_MODULE) {
        size = sizeof(struct rec_module);
    } else if (kind == KIND_BPF) {
        size = sizeof(struct rec_bpf);
    } else if (kind == KIND_SETID) {
        size = sizeof(struct rec_setid);
    } else if (kind == KIND_MEMPROT) {
        size = sizeof(struct rec_memprot);
    } else if (kind == KIND_SOCKET) {
        size = sizeof(struct rec_socket);
    } else if (kind == KIND_VM_WRITE) {
        size = sizeof(struct rec_vm_write);
    } else if (kind == KIND_XATTR) {
        size = sizeof(struct rec_xattr);
    } else if (kind == KIND_NAMESPACE) {
        size = sizeof(struct rec_ns);
    } else if (kind == KIND_DUP) {
        size = sizeof(struct rec_dup);
    }
    if (events.ringbuf_output(r, size, 0) != 0)
        count_lost(kind);
    return 0;
}

/* Syscall exit: emit the stashed record with the return value. */
static __always_inline int finish(s64 ret, u32 kind) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct inflight *r = inflight.lookup(&tid);
    if (!r)
        return 0;
    if (r->hdr.kind == kind) {
        r->hdr.ret = ret;
        output(r, kind);
    }
    inflight.delete(&tid);
    return 0;
}

static __always_inline u32 read_user_path(char *dst, const char *src) {
    int n = bpf_probe_read_user_str(dst, PATH_LEN, src);
    if (n < 0) {
        dst[0] = 0;
        return 0;
    }
    return n;
}

/* The index just after the component that follows `start` in p (its '/'), or 0. Names of a
 * pid, a user or a cgroup are short: 32 bytes at most. */
static __always_inline int skip_component(const char *p, int start) {
    int i = start;
#pragma unroll
    for (int k = 0; k < 32; k++) {
        if (p[i] == '/' || p[i] == 0)
            break;
        i++;
    }
    return p[i] == '/' ? i + 1 : 0;
}

#define IS4(p, a, b, c, d) ((p)[0] == (a) && (p)[1] == (b) && (p)[2] == (c) && (p)[3] == (d))

/* Paths below the ignored /proc and /sys, or of no fixed prefix, that attacks use: written,
 * /proc/<pid>/mem (injection), uid_map and gid_map (user namespace mappings), the kernel's
 * usermode hooks (core_pattern, modprobe, uevent_helper: container escapes); read,
 * /proc/<pid>/environ (secrets in another process's environment) and /home/<user>/.ssh/. */
static __always_inline int special_path_wanted(const char *p, int write) {
    if (IS4(p, '/', 'p', 'r', 'o') && p[4] == 'c' && p[5] == '/') {
        if (write && IS4(p + 6, 's', 'y', 's', '/') &&
            ((IS4(p + 10, 'k', 'e', 'r', 'n') && IS4(p + 14, 'e', 'l', '/', 'c') &&
              IS4(p + 18, 'o', 'r', 'e', '_')) || /* /proc/sys/kernel/core_pattern */
             (IS4(p + 10, 'k', 'e', 'r', 'n') && IS4(p + 14, 'e', 'l', '/', 'm') &&
              IS4(p + 18, 'o', 'd', 'p', 'r')))) /* /proc/sys/kernel/modprobe */
            return 1;
        int i = skip_component(p, 6);
        if (!i)
            return 0;
        const char *n = p + (i & 127);
        if (write)
            return (IS4(n, 'm', 'e', 'm', 0)) ||
                   ((n[0] == 'u' || n[0] == 'g') && IS4(n + 1, 'i', 'd', '_', 'm') &&
                    n[5] == 'a' && n[6] == 'p' && n[7] == 0);
        return IS4(n, 'e', 'n', 'v', 'i') && IS4(n + 4, 'r', 'o', 'n', 0);
    }
    if (write && IS4(p, '/', 's', 'y', 's') && IS4(p + 4, '/', 'k', 'e', 'r') &&
        IS4(p + 8, 'n', 'e', 'l', '/') && IS4(p + 12, 'u', 'e', 'v', 'e'))
        return 1; /* /sys/kernel/uevent_helper */
    if (!write && IS4(p, '/', 'h', 'o', 'm') && p[4] == 'e' && p[5] == '/') {
        int i = skip_component(p, 6);
        const char *n = p + (i & 127);
        return i && IS4(n, '.', 's', 's', 'h') && (n[4] == '/' || n[4] == 0);
    }
    return 0;
}

/* A path whose last component is release_agent (a cgroup v1 hierarchy mounted anywhere). */
static __always_inline int is_release_agent(const char *p, u32 len) {
    if (len < 15) /* "/release_agent" and its NUL */
        return 0;
    const char *t = p + ((len - 15) & (PATH_LEN - 1));
    return IS4(t, '/', 'r', 'e', 'l') && IS4(t + 4, 'e', 'a', 's', 'e') &&
           IS4(t + 8, '_', 'a', 'g', 'e') && t[12] == 'n' && t[13] == 't' && t[14] == 0;
}

/* Is an access to this path worth an event? Relative paths cannot be resolved here. */
static __always_inline int path_wanted(const char *p, int write) {
    if (p[0] != '/')
        return write ? RELATIVE_WRITES : RELATIVE_READS;
    if (special_path_wanted(p, write))
        return 1;
    if (MATCH_IGNORE_PREFIX(p))
        return 0;
    if (write && MATCH_WRITE_PREFIX(p))
        return 1;
    return MATCH_READ_PREFIX(p);
}

#ifdef KERNEL_LAYOUT
/* Kernel struct members are read through offsets taken from the running kernel's BTF (the
 * OFF_* #defines rendered by alpha.sensors.kernel_layout), never from the packaged headers. */
static __always_inline u64 kptr(u64 base, u32 off) {
    u64 v = 0;
    if (base)
        bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
    return v;
}

static __always_inline u32 ku32(u64 base, u32 off) {
    u32 v = 0;
    if (base)
        bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
    return v;
}

/* A path as d_path would build it: names from the leaf up, crossing mount points to the root
 * of the mount tree, into `buf` (EXE_LEN + NAME_LEN bytes: NUL-separated names, leaf first).
 * A pseudo file (memfd) is its own root with no mount of its own; an unhashed leaf was
 * deleted. Both are what /proc/PID/exe shows with " (deleted)".
 *
 * The length, depth and flags live in the record, not in registers: loaded back they are
 * unknown to the verifier, so the states of different iterations compare equal and are pruned
 * (with the counts in registers, 32 iterations of two ways each do not verify). */
static __always_inline void walk_path(u64 dentry, u64 vfsmnt, char *buf, u32 *len, u32 *depth,
                                      u32 *flags, u32 *offs) {
    *len = 0;
    *depth = 0;
    if (!dentry || !vfsmnt) {
        *flags |= ID_F_NO_EXE;
        return;
    }
    if (!kptr(dentry, OFF_DENTRY_HASH_PPREV) && kptr(dentry, OFF_DENTRY_PARENT) != dentry)
        *flags |= ID_F_EXE_DELETED;
    u64 mnt = vfsmnt - OFF_MOUNT_MNT;
    u64 root = kptr(vfsmnt, OFF_VFSMOUNT_ROOT);
    for (int i = 0; i < EXE_DEPTH; i++) {
        if (dentry == root) {
            u64 up = kptr(mnt, OFF_MOUNT_PARENT);
            if (!up || up == mnt) {
                *flags |= ID_F_EXE_COMPLETE;
                return;
            }
            dentry = kptr(mnt, OFF_MOUNT_MOUNTPOINT);
            mnt = up;
            root = kptr(mnt + OFF_MOUNT_MNT, OFF_VFSMOUNT_ROOT);
            continue;
        }
        u64 parent = kptr(dentry, OFF_DENTRY_PARENT);
        u32 at = *len;
        if (at >= EXE_LEN) {
            *flags |= ID_F_EXE_TRUNCATED;
            return;
        }
        /* buf has NAME_LEN spare bytes past EXE_LEN; the mask is for the verifier, the empty
         * asm keeps clang from dropping it as redundant after the test above. */
        asm volatile("" : "+r"(at));
        at &= EXE_LEN - 1;
        int n = bpf_probe_read_kernel_str(&buf[at], NAME_LEN, (void *)kptr(dentry, OFF_DENTRY_NAME));
        if (n <= 0)
            return;
        if (offs)
            offs[*depth & (EXE_DEPTH - 1)] = at;
        *len += n;
        *depth += 1;
        if (parent == dentry || !parent) {
            /* A root that is no mount's root: a pseudo file (memfd), or a detached tree. */
            *flags |= *depth == 1 ? ID_F_EXE_PSEUDO : ID_F_EXE_COMPLETE;
            return;
        }
        dentry = parent;
    }
    *flags |= ID_F_EXE_TRUNCATED;
}

/* The struct file behind one of the current task's fds, 0 if none. */
static __always_inline u64 fd_file(int fd) {
    if (fd < 0)
        return 0;
    u64 fdt = kptr(kptr(bpf_get_current_task(), OFF_TASK_FILES), OFF_FILES_FDT);
    if ((u32)fd >= ku32(fdt, OFF_FDT_MAX_FDS))
        return 0;
    return kptr(kptr(fdt, OFF_FDT_FD), (u32)fd * 8);
}

/* The struct sock behind a socket fd, 0 if the fd is no socket. */
static __always_inline u64 fd_sock(int fd) {
    u64 file = fd_file(fd);
    u64 inode = kptr(file, OFF_FILE_INODE);
    u16 mode = 0;
    if (!inode)
        return 0;
    bpf_probe_read_kernel(&mode, sizeof(mode), (void *)(inode + OFF_INODE_MODE));
    if ((mode & 0170000) != 0140000) /* S_IFSOCK */
        return 0;
    return kptr(kptr(file, OFF_FILE_PRIVATE), OFF_SOCKET_SK);
}

/* ---- enforcement: kill at the tracepoint ----------------------------------------------- */
struct enforce_cfg {
    u32 mode; /* ENFORCE_* */
    u32 checks; /* CHECK_* armed by rules with action: kill */
};
struct exe_key {
    u64 ino;
    u64 dev; /* the kernel's dev_t (MKDEV: major << 20 | minor) */
};
BPF_ARRAY(enforce_cfg, struct enforce_cfg, 1);
BPF_HASH(enforce_allow_exe, struct exe_key, u8, 1024);
BPF_HASH(enforce_allow_cgroup, u64, u8, 1024);

/* Kill the current process for `check`, unless enforcement is off for it, the process is
 * allowed (its exe or cgroup), or it is one never killed: the sensor itself, PID 1, a kernel
 * thread. SIGKILL sent here is pending before the task returns to user space: after an exec
 * the new image runs no instruction. Every decision is a record. */
static __always_inline void enforce(u32 check) {
    u32 zero = 0;
    struct enforce_cfg *cfg = enforce_cfg.lookup(&zero);
    if (!cfg || cfg->mode == ENFORCE_OFF || !(cfg->checks & check))
        return;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (tgid == SELF_TGID || tgid <= 1)
        return;
    u64 task = bpf_get_current_task();
    u64 mm = kptr(task, OFF_TASK_MM);
    if (!mm) /* a kernel thread */
        return;
    u64 cgroup = bpf_get_current_cgroup_id();
    if (enforce_allow_cgroup.lookup(&cgroup))
        return;
    u64 inode = kptr(kptr(mm, OFF_MM_EXE_FILE), OFF_FILE_INODE);
    struct exe_key key = {};
    key.ino = kptr(inode, OFF_INODE_INO);
    key.dev = ku32(kptr(inode, OFF_INODE_SB), OFF_SB_DEV);
    if (enforce_allow_exe.lookup(&key))
        return;
    int result = 0;
    u32 mode = cfg->mode;
    if (mode == ENFORCE_KILL)
        result = bpf_send_signal(9);
    struct rec_enforce *r = events.ringbuf_reserve(sizeof(struct rec_enforce));
    if (!r) {
        count_lost(KIND_ENFORCE);
        return;
    }
    fill_hdr(&r->hdr, KIND_ENFORCE, SC_NONE);
    r->check = check;
    r->mode = mode;
    r->signal = 9;
    r->result = result;
    events.ringbuf_submit(r, 0);
}

/* What fd n of the current task is (FD_*), with an inet socket's peer: the stdio a reverse
 * shell is made of, read at exec so that a shell that exits at once is still described. */
static __always_inline void fd_kind(int fd, u8 *kind, u16 *port, u8 *addr) {
    *port = 0;
    __builtin_memset(addr, 0, 16);
    u64 file = fd_file(fd);
    if (!file) {
        *kind = FD_CLOSED;
        return;
    }
    u64 inode = kptr(file, OFF_FILE_INODE);
    u16 mode = 0;
    bpf_probe_read_kernel(&mode, sizeof(mode), (void *)(inode + OFF_INODE_MODE));
    u16 fmt = mode & 0170000;
    if (fmt == 0010000) {
        *kind = FD_PIPE;
    } else if (fmt == 0020000) {
        /* A character device: a terminal when its major is a pty (136-143), tty (4) or the
         * console (5); /dev/null and friends are files. */
        u32 major = ku32(inode, OFF_INODE_RDEV) >> 20;
        *kind = (major >= 136 && major <= 143) || major == 4 || major == 5 ? FD_TTY : FD_FILE;
    } else if (fmt == 0140000) {
        u64 sk = kptr(kptr(file, OFF_FILE_PRIVATE), OFF_SOCKET_SK);
        u16 family = 0;
        bpf_probe_read_kernel(&family, sizeof(family), (void *)(sk + OFF_SK_FAMILY));
        if (family == QSC_AF_INET) {
            *kind = FD_INET;
            bpf_probe_read_kernel(addr, 4, (void *)(sk + OFF_SK_DADDR));
            bpf_probe_read_kernel(port, 2, (void *)(sk + OFF_SK_DPORT));
        } else if (family == QSC_AF_INET6) {
            *kind = FD_INET6;
            bpf_probe_read_kernel(addr, 16, (void *)(sk + OFF_SK_V6_DADDR));
            bpf_probe_read_kernel(port, 2, (void *)(sk + OFF_SK_DPORT));
        } else {
            *kind = family == QSC_AF_UNIX ? FD_UNIX : FD_OTHER_SOCKET;
        }
    } else {
        *kind = FD_FILE;
    }
}

static __always_inline int stdio_inet(u8 kind) { return kind == FD_INET || kind == FD_INET6; }
#endif

/* ---- process lifecycle: exec, fork, exit ------------------------------------------------ */
#ifdef PROBE_EXEC
static __always_inline int exec_enter(u32 sc, int dirfd, const char *const *argv, u32 at_flags) {
    if (is_self())
        return 0;
    u32 zero = 0;
    struct rec_exec *e = exec_scratch.lookup(&zero);
    if (!e)
        return 0;
    e->hdr.syscall = sc;
    e->dirfd = dirfd;
    e->at_flags = at_flags;
    e->flags = 0;
    u32 off = 0;
    u32 argc = 0;
    const char *argp = 0;
#pragma unroll
    for (int i = 0; i < MAX_ARGS; i++) {
        argp = 0;
        if (bpf_probe_read_user(&argp, sizeof(argp), &argv[i]) != 0 || !argp)
            goto done;
        if (off >= ARGS_LEN) {
            e->flags |= EXEC_F_ARGS_TRUNCATED;
            goto done;
        }
        /* off < ARGS_LEN here, and args has ARG_LEN spare bytes: the mask only convinces the
         * verifier. */
        int n = bpf_probe_read_user_str(&e->args[off & (ARGS_LEN - 1)], ARG_LEN, argp);
        if (n <= 0)
            goto done;
        if (n == ARG_LEN)
            e->flags |= EXEC_F_ARGS_TRUNCATED;
        off += n;
        argc++;
    }
    argp = 0;
    if (bpf_probe_read_user(&argp, sizeof(argp), &argv[MAX_ARGS]) == 0 && argp)
        e->flags |= EXEC_F_ARGS_TRUNCATED;
done:
    e->argc = argc;
    e->args_len = off;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    exec_stash.update(&tid, e);
    return 0;
}

static __always_inline int exec_failed(s64 ret) {
    /* A successful exec returns in the new image after sched_process_exec consumed the stash. */
    if (ret < 0) {
        u32 tid = (u32)bpf_get_current_pid_tgid();
        exec_stash.delete(&tid);
    }
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve) {
    return exec_enter(SC_EXECVE, 0, (const char *const *)args->argv, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_execve) { return exec_failed(args->ret); }

#ifdef HAVE_sys_enter_execveat
TRACEPOINT_PROBE(syscalls, sys_enter_execveat) {
    return exec_enter(SC_EXECVEAT, args->fd, (const char *const *)args->argv, args->flags);
}
TRACEPOINT_PROBE(syscalls, sys_exit_execveat) { return exec_failed(args->ret); }
#endif

#ifdef KERNEL_LAYOUT
static __always_inline void exe_path(struct rec_exec *e, u64 task) {
    u64 file = kptr(kptr(task, OFF_TASK_MM), OFF_MM_EXE_FILE);
    walk_path(kptr(file, OFF_FILE_DENTRY), kptr(file, OFF_FILE_MNT), e->exe, &e->exe_len,
              &e->exe_depth, &e->id_flags, 0);
}

/* The environment entries whose names the env_names map holds (keys: the first
 * ENV_KEY_LEN bytes of "NAME=", zero-padded), read from the new image's own copy of its
 * environment, so what was set is what the program got, with nothing to race. The scan state
 * lives in map memory so that the verifier prunes the iterations (see walk_path). */
struct env_key {
    char name[ENV_KEY_LEN];
};
struct env_scan {
    u64 pos;
    u64 end;
    char buf[ENV_SCAN_LEN];
};
BPF_HASH(env_names, struct env_key, u8, 256);
BPF_PERCPU_ARRAY(env_scratch, struct env_scan, 1);

static __always_inline void exec_env(struct rec_exec *e, u64 task) {
    e->env_count = 0;
    e->env_len = 0;
    e->env_kept = 0;
    e->env_flags = 0;
    u32 zero = 0;
    struct env_scan *s = env_scratch.lookup(&zero);
    u64 mm = kptr(task, OFF_TASK_MM);
    if (!s || !mm)
        return;
    s->pos = kptr(mm, OFF_MM_ENV_START);
    s->end = kptr(mm, OFF_MM_ENV_END);
    e->env_flags = ENV_F_SCANNED;
    for (int i = 0; i < MAX_ENV; i++) {
        u64 pos = s->pos;
        if (pos >= s->end)
            return;
        int n = bpf_probe_read_user_str(s->buf, ENV_SCAN_LEN, (void *)pos);
        if (n <= 0 || n >= ENV_SCAN_LEN) {
            e->env_flags |= ENV_F_INCOMPLETE;
            return;
        }
        s->pos = pos + n;
        e->env_count += 1;
        struct env_key key = {};
        int cut = 0;
#pragma unroll
        for (int j = 0; j < ENV_KEY_LEN; j++) {
            char c = s->buf[j];
            if (cut)
                c = 0;
            if (c == '=' || c == 0)
                cut = 1;
            key.name[j] = c;
        }
        if (!env_names.lookup(&key))
            continue;
        u32 at = e->env_len;
        if (at >= ENV_LEN) {
            e->env_flags |= ENV_F_TRUNCATED;
            continue;
        }
        asm volatile("" : "+r"(at));
        at &= ENV_LEN - 1;
        int k = bpf_probe_read_kernel_str(&e->env[at], ENV_ENTRY_LEN, s->buf);
        if (k > 0) {
            e->env_len += k;
            e->env_kept += 1;
        }
    }
    if (s->pos < s->end)
        e->env_flags |= ENV_F_INCOMPLETE;
}

static __always_inline void exec_identity(struct rec_exec *e) {
    u64 task = bpf_get_current_task();
    u64 cred = kptr(task, OFF_TASK_REAL_CRED);
    e->id_flags = ID_F_KERNEL;
    e->euid = ku32(cred, OFF_CRED_EUID);
    e->egid = ku32(cred, OFF_CRED_EGID);
    e->cap_effective = kptr(cred, OFF_CRED_CAP_EFFECTIVE);
    e->cap_permitted = kptr(cred, OFF_CRED_CAP_PERMITTED);
    fd_kind(0, &e->stdio[0].kind, &e->stdio[0].port, e->stdio[0].addr);
    fd_kind(1, &e->stdio[1].kind, &e->stdio[1].port, e->stdio[1].addr);
    fd_kind(2, &e->stdio[2].kind, &e->stdio[2].port, e->stdio[2].addr);
#ifdef OFF_TASK_LOGINUID
    e->auid = ku32(task, OFF_TASK_LOGINUID);
    e->sessionid = ku32(task, OFF_TASK_SESSIONID);
    e->id_flags |= ID_F_LOGINUID;
#else
    e->auid = (u32)-1;
    e->sessionid = (u32)-1;
#endif
    e->ppid = ku32(kptr(task, OFF_TASK_REAL_PARENT), OFF_TASK_TGID);
    u64 tty = kptr(kptr(task, OFF_TASK_SIGNAL), OFF_SIGNAL_TTY);
    e->tty[0] = 0;
    if (tty)
        bpf_probe_read_kernel_str(e->tty, TTY_LEN, (void *)(tty + OFF_TTY_NAME));
    exe_path(e, task);
    exec_env(e, task);
}
#else
static __always_inline void exec_identity(struct rec_exec *e) {
    e->stdio[0].kind = e->stdio[1].kind = e->stdio[2].kind = FD_UNKNOWN;
    e->id_flags = 0;
    e->exe_len = 0;
    e->exe_depth = 0;
    e->env_count = e->env_len = e->env_kept = e->env_flags = 0;
}
#endif

TRACEPOINT_PROBE(sched, sched_process_exec) {
    if (is_self())
        return 0;
    u32 old = args->old_pid;
    struct rec_exec *e = exec_stash.lookup(&old);
    if (!e) {
        u32 zero = 0;
        e = exec_scratch.lookup(&zero);
        if (!e)
            return 0;
        e->hdr.syscall = SC_NONE;
        e->argc = 0;
        e->args_len = 0;
        e->flags = EXEC_F_NO_STASH;
        e->dirfd = 0;
        e->at_flags = 0;
        count(CNT_EXEC_NO_STASH);
    }
    fill_hdr(&e->hdr, KIND_EXEC, e->hdr.syscall);
    e->old_pid = old;
    unsigned short loc = args->data_loc_filename & 0xFFFF;
    bpf_probe_read_kernel_str(e->filename, PATH_LEN, (void *)args + loc);
    exec_identity(e);
#ifdef KERNEL_LAYOUT
    if ((e->id_flags & ID_F_EXE_PSEUDO) && e->exe[0] == 'm' && e->exe[1] == 'e' &&
        e->exe[2] == 'm' && e->exe[3] == 'f' && e->exe[4] == 'd' && e->exe[5] == ':')
        enforce(CHECK_MEMFD_EXEC);
    else if (ENFORCE_SHELL(e->hdr.comm) && (stdio_inet(e->stdio[0].kind) ||
                                             stdio_inet(e->stdio[1].kind) ||
                                             stdio_inet(e->stdio[2].kind)))
        enforce(CHECK_SOCKET_STDIO_EXEC);
#endif
    u32 n = e->args_len;
    if (n > ARGS_LEN + ARG_LEN)
        n = ARGS_LEN + ARG_LEN;
    if (events.ringbuf_output(e, offsetof(struct rec_exec, args) + n, 0) != 0)
        count_lost(KIND_EXEC);
    exec_stash.delete(&old);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_exit_group) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    s32 code = args->error_code;
    exit_codes.update(&tgid, &code);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 id = bpf_get_current_pid_tgid();
#ifdef HAVE_GROUP_DEAD
    if (!args->group_dead)
        return 0;
#else
    if ((u32)id != (u32)(id >> 32))
        return 0;
#endif
    u32 tgid = id >> 32;
    if (tgid == SELF_TGID)
        return 0;
    struct rec_exit *x = events.ringbuf_reserve(sizeof(struct rec_exit));
    if (!x) {
        count_lost(KIND_EXIT);
        exit_codes.delete(&tgid);
        return 0;
    }
    fill_hdr(&x->hdr, KIND_EXIT, SC_NONE);
    x->exit_code = 0;
    x->flags = 0;
    s32 *code = exit_codes.lookup(&tgid);
    if (code) {
        x->exit_code = *code;
        x->flags = EXIT_F_CODE_KNOWN;
        exit_codes.delete(&tgid);
    }
    events.ringbuf_submit(x, 0);
    return 0;
}

#ifdef HAVE_task_newtask
/* Fires in the parent while the child is created; threads are not processes. Not filtered by
 * own tgid: the process table needs the parent of the sensor's own children. */
TRACEPOINT_PROBE(task, task_newtask) {
    if (args->clone_flags & QSC_CLONE_THREAD)
        return 0;
    struct rec_fork *f = events.ringbuf_reserve(sizeof(struct rec_fork));
    if (!f) {
        count_lost(KIND_FORK);
        return 0;
    }
    fill_hdr(&f->hdr, KIND_FORK, SC_NONE);
    f->child_pid = args->pid;
    f->_pad = 0;
    f->clone_flags = args->clone_flags;
    events.ringbuf_submit(f, 0);
    return 0;
}
#endif
#endif /* PROBE_EXEC */

/* ---- files: open, chmod, chown, unlink, rename ------------------------------------------ */
#ifdef PROBE_OPEN
#ifdef KERNEL_LAYOUT
/* A path the prefix filters cannot judge as written: relative, or with "//", "/./", "/../"
 * (or any component starting with a dot: cheaper to resolve than to parse). */
static __always_inline int not_canonical(const char *p, u32 len) {
    if (!len)
        return 0;
    if (p[0] != '/')
        return 1;
    for (int i = 0; i < PATH_LEN - 1; i++) {
        char c = p[i];
        if (c == 0)
            return 0;
        if (c == '/' && (p[i + 1] == '/' || p[i + 1] == '.'))
            return 1;
    }
    return 0;
}

/* The opened file named from its fd: a dentry walk (leaf first), then the names in root-first
 * order into out.path. `spill` takes the last name's overflow past PATH_LEN. */
struct resolve_scratch {
    u32 offs[EXE_DEPTH];
    u32 len;
    u32 depth;
    u32 flags;
    u32 pos;
    char names[EXE_LEN + NAME_LEN];
    struct rec_resolved out;
    char spill[NAME_LEN];
};
BPF_PERCPU_ARRAY(resolve_scratch, struct resolve_scratch, 1);

static __always_inline void resolve_open(struct inflight *r, s64 ret) {
    u32 zero = 0;
    struct resolve_scratch *s = resolve_scratch.lookup(&zero);
    if (!s)
        return;
    u64 file = fd_file((int)ret);
    s->flags = 0;
    walk_path(kptr(file, OFF_FILE_DENTRY), kptr(file, OFF_FILE_MNT), s->names, &s->len,
              &s->depth, &s->flags, s->offs);
    if (!s->depth)
        return;
    s->pos = 0;
    for (int k = 0; k < EXE_DEPTH; k++) {
        if (k >= s->depth)
            break;
        u32 d = (s->depth - 1 - k) & (EXE_DEPTH - 1);
        u32 at = s->pos;
        if (at >= PATH_LEN - 1) {
            s->flags |= ID_F_EXE_TRUNCATED;
            break;
        }
        asm volatile("" : "+r"(at));
        at &= PATH_LEN - 1;
        s->out.path[at] = '/';
        u32 o = s->offs[d];
        asm volatile("" : "+r"(o));
        o &= EXE_LEN - 1;
        int n = bpf_probe_read_kernel_str(&s->out.path[(at + 1) & (PATH_LEN - 1)], NAME_LEN,
                                          &s->names[o]);
        if (n <= 0)
            break;
        s->pos = at + n;
    }
    s->out.path[PATH_LEN - 1] = 0;
    int write = (r->path.flags & QSC_WRITE_FLAGS) != 0;
    if (!(r->path.resolve & PATH_R_KEEP) && !path_wanted(s->out.path, write)) {
        count(CNT_FILTERED);
        return;
    }
    __builtin_memcpy(&s->out.hdr, &r->hdr, sizeof(struct rec_hdr));
    s->out.hdr.kind = KIND_OPEN_RESOLVED;
    s->out.hdr.ret = ret;
    s->out.dfd = r->path.dfd;
    s->out.mode = r->path.mode;
    s->out.flags = r->path.flags;
    s->out.path_flags = s->flags;
    s->out.depth = s->depth;
    __builtin_memcpy(s->out.raw, r->path.path, PATH_LEN);
    if (events.ringbuf_output(&s->out, sizeof(struct rec_resolved), 0) != 0)
        count_lost(KIND_OPEN_RESOLVED);
}
#endif

/* Open's exit: a pending path is judged by the file it opened; a failed open of one has no
 * file, and is reported as written only when the relative_* setting keeps it. */
static __always_inline int finish_open(s64 ret) {
#ifdef KERNEL_LAYOUT
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct inflight *r = inflight.lookup(&tid);
    if (!r)
        return 0;
    if (r->hdr.kind == KIND_OPEN && (r->path.resolve & PATH_R_PENDING)) {
        if (ret >= 0)
            resolve_open(r, ret);
        else if (r->path.resolve & PATH_R_KEEP) {
            r->hdr.ret = ret;
            output(r, KIND_OPEN);
        }
        inflight.delete(&tid);
        return 0;
    }
#endif
    return finish(ret, KIND_OPEN);
}

static __always_inline int open_enter(u32 sc, int dfd, const char *filename, u64 flags, u32 mode) {
    if (is_self())
        return 0;
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    r->path.path_len = read_user_path(r->path.path, filename);
    int write = (flags & QSC_WRITE_FLAGS) != 0;
    int wanted = path_wanted(r->path.path, write) ||
                 (write && is_release_agent(r->path.path, r->path.path_len));
    r->path.resolve = 0;
#ifdef KERNEL_LAYOUT
    if (not_canonical(r->path.path, r->path.path_len))
        r->path.resolve = PATH_R_PENDING | (wanted ? PATH_R_KEEP : 0);
#endif
    if (!wanted && !r->path.resolve) {
        count(CNT_FILTERED);
        return 0;
    }
    r->path.dfd = dfd;
    r->path.mode = mode;
    r->path.flags = flags;
    r->path.uid = 0;
    r->path.gid = 0;
    return stash(r, KIND_OPEN, sc, 1);
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    return open_enter(SC_OPENAT, args->dfd, args->filename, (u32)args->flags, args->mode);
}
TRACEPOINT_PROBE(syscalls, sys_exit_openat) { return finish_open(args->ret); }

#ifdef HAVE_sys_enter_open
TRACEPOINT_PROBE(syscalls, sys_enter_open) {
    return open_enter(SC_OPEN, -100, args->filename, (u32)args->flags, args->mode);
}
TRACEPOINT_PROBE(syscalls, sys_exit_open) { return finish_open(args->ret); }
#endif

#ifdef HAVE_sys_enter_creat
TRACEPOINT_PROBE(syscalls, sys_enter_creat) {
    return open_enter(SC_CREAT, -100, args->pathname, QSC_O_CREAT | QSC_O_WRONLY | QSC_O_TRUNC,
                      args->mode);
}
TRACEPOINT_PROBE(syscalls, sys_exit_creat) { return finish_open(args->ret); }
#endif

#ifdef HAVE_sys_enter_openat2
TRACEPOINT_PROBE(syscalls, sys_enter_openat2) {
    struct {
        u64 flags;
        u64 mode;
    } how = {};
    bpf_probe_read_user(&how, sizeof(how), args->how);
    return open_enter(SC_OPENAT2, args->dfd, args->filename, how.flags, (u32)how.mode);
}
TRACEPOINT_PROBE(syscalls, sys_exit_openat2) { return finish_open(args->ret); }
#endif
#endif /* PROBE_OPEN */

#ifdef PROBE_CHMOD
/* setuid/setgid/world-writable modes anywhere; other modes only on watched paths. */
static __always_inline int chmod_enter(u32 sc, int dfd, const char *filename, u32 mode, u32 flags) {
    if (is_self())
        return 0;
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    int special = (mode & (QSC_S_ISUID | QSC_S_ISGID | QSC_S_IWOTH)) != 0;
    if (filename) {
        r->path.path_len = read_user_path(r->path.path, filename);
    } else {
        r->path.path_len = 0;
        r->path.path[0] = 0;
    }
    if (!special && !(filename && path_wanted(r->path.path, 1))) {
        count(CNT_FILTERED);
        return 0;
    }
    r->path.dfd = dfd;
    r->path.mode = mode;
    r->path.flags = flags;
    r->path.uid = 0;
    r->path.gid = 0;
    return stash(r, KIND_CHMOD, sc, 1);
}

TRACEPOINT_PROBE(syscalls, sys_enter_fchmodat) {
    return chmod_enter(SC_FCHMODAT, args->dfd, args->filename, args->mode, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_fchmodat) { return finish(args->ret, KIND_CHMOD); }
TRACEPOINT_PROBE(syscalls, sys_enter_fchmod) {
    return chmod_enter(SC_FCHMOD, args->fd, 0, args->mode, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_fchmod) { return finish(args->ret, KIND_CHMOD); }
#ifdef HAVE_sys_enter_chmod
TRACEPOINT_PROBE(syscalls, sys_enter_chmod) {
    return chmod_enter(SC_CHMOD, -100, args->filename, args->mode, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_chmod) { return finish(args->ret, KIND_CHMOD); }
#endif
#ifdef HAVE_sys_enter_fchmodat2
TRACEPOINT_PROBE(syscalls, sys_enter_fchmodat2) {
    return chmod_enter(SC_FCHMODAT2, args->dfd, args->filename, args->mode, args->flags);
}
TRACEPOINT_PROBE(syscalls, sys_exit_fchmodat2) { return finish(args->ret, KIND_CHMOD); }
#endif
#endif /* PROBE_CHMOD */

#ifdef PROBE_CHOWN
/* Ownership given to root anywhere (the step before a setuid-root binary); other changes only
 * on watched paths. */
static __always_inline int chown_enter(u32 sc, int dfd, const char *filename, u32 uid, u32 gid,
                                       u32 flags) {
    if (is_self())
        return 0;
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    int to_root = uid == 0 || gid == 0;
    if (filename) {
        r->path.path_len = read_user_path(r->path.path, filename);
    } else {
        r->path.path_len = 0;
        r->path.path[0] = 0;
    }
    if (!to_root && !(filename && path_wanted(r->path.path, 1))) {
        count(CNT_FILTERED);
        return 0;
    }
    r->path.dfd = dfd;
    r->path.mode = 0;
    r->path.flags = flags;
    r->path.uid = uid;
    r->path.gid = gid;
    return stash(r, KIND_CHOWN, sc, 1);
}

TRACEPOINT_PROBE(syscalls, sys_enter_fchownat) {
    return chown_enter(SC_FCHOWNAT, args->dfd, args->filename, args->user, args->group,
                       args->flag);
}
TRACEPOINT_PROBE(syscalls, sys_exit_fchownat) { return finish(args->ret, KIND_CHOWN); }
TRACEPOINT_PROBE(syscalls, sys_enter_fchown) {
    return chown_enter(SC_FCHOWN, args->fd, 0, args->user, args->group, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_fchown) { return finish(args->ret, KIND_CHOWN); }
#ifdef HAVE_sys_enter_chown
TRACEPOINT_PROBE(syscalls, sys_enter_chown) {
    return chown_enter(SC_CHOWN, -100, args->filename, args->user, args->group, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_chown) { return finish(args->ret, KIND_CHOWN); }
#endif
#ifdef HAVE_sys_enter_lchown
TRACEPOINT_PROBE(syscalls, sys_enter_lchown) {
    return chown_enter(SC_LCHOWN, -100, args->filename, args->user, args->group, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_lchown) { return finish(args->ret, KIND_CHOWN); }
#endif
#endif /* PROBE_CHOWN */

#ifdef PROBE_UNLINK
static __always_inline int unlink_enter(u32 sc, int dfd, const char *pathname, u32 flags) {
    if (is_self())
        return 0;
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    r->path.path_len = read_user_path(r->path.path, pathname);
    if (!path_wanted(r->path.path, 1)) {
        count(CNT_FILTERED);
        return 0;
    }
    r->path.dfd = dfd;
    r->path.mode = 0;
    r->path.flags = flags;
    r->path.uid = 0;
    r->path.gid = 0;
    return stash(r, KIND_UNLINK, sc, 1);
}

TRACEPOINT_PROBE(syscalls, sys_enter_unlinkat) {
    return unlink_enter(SC_UNLINKAT, args->dfd, args->pathname, args->flag);
}
TRACEPOINT_PROBE(syscalls, sys_exit_unlinkat) { return finish(args->ret, KIND_UNLINK); }
#ifdef HAVE_sys_enter_unlink
TRACEPOINT_PROBE(syscalls, sys_enter_unlink) {
    return unlink_enter(SC_UNLINK, -100, args->pathname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_unlink) { return finish(args->ret, KIND_UNLINK); }
#endif
#endif /* PROBE_UNLINK */

#if defined(PROBE_RENAME) || defined(PROBE_LINK)
/* rename and link: reported when either path passes the write filter. */
/* A link to the root, /etc or /root themselves (no trailing slash: the write prefixes take
 * those): a symlink in /tmp that opens the whole tree to whoever follows it. */
static __always_inline int top_dir_target(const char *p) {
    if (p[0] != '/')
        return 0;
    if (p[1] == 0)
        return 1;
    if (IS4(p, '/', 'e', 't', 'c') && p[4] == 0)
        return 1;
    return IS4(p, '/', 'r', 'o', 'o') && p[4] == 't' && p[5] == 0;
}

static __always_inline int two_paths_enter(u32 kind, u32 sc, int olddfd, const char *oldname,
                                           int newdfd, const char *newname, u32 flags) {
    if (is_self())
        return 0;
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    read_user_path(r->two.oldpath, oldname);
    read_user_path(r->two.newpath, newname);
    if (!path_wanted(r->two.oldpath, 1) && !path_wanted(r->two.newpath, 1) &&
        !(kind == KIND_LINK && top_dir_target(r->two.oldpath))) {
        count(CNT_FILTERED);
        return 0;
    }
    r->two.olddfd = olddfd;
    r->two.newdfd = newdfd;
    r->two.flags = flags;
    r->two._pad = 0;
    return stash(r, kind, sc, 1);
}
#endif

#ifdef PROBE_RENAME
static __always_inline int rename_enter(u32 sc, int olddfd, const char *oldname, int newdfd,
                                        const char *newname, u32 flags) {
    return two_paths_enter(KIND_RENAME, sc, olddfd, oldname, newdfd, newname, flags);
}

TRACEPOINT_PROBE(syscalls, sys_enter_renameat) {
    return rename_enter(SC_RENAMEAT, args->olddfd, args->oldname, args->newdfd, args->newname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_renameat) { return finish(args->ret, KIND_RENAME); }
#ifdef HAVE_sys_enter_renameat2
TRACEPOINT_PROBE(syscalls, sys_enter_renameat2) {
    return rename_enter(SC_RENAMEAT2, args->olddfd, args->oldname, args->newdfd, args->newname,
                        args->flags);
}
TRACEPOINT_PROBE(syscalls, sys_exit_renameat2) { return finish(args->ret, KIND_RENAME); }
#endif
#ifdef HAVE_sys_enter_rename
TRACEPOINT_PROBE(syscalls, sys_enter_rename) {
    return rename_enter(SC_RENAME, -100, args->oldname, -100, args->newname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_rename) { return finish(args->ret, KIND_RENAME); }
#endif
#endif /* PROBE_RENAME */

#ifdef PROBE_LINK
/* Reported when the new link or its target passes the write filter, or the target is /, /etc
 * or /root: a symlink to /etc/shadow planted in /tmp and a link to /dev/null over a log do. A relative target (a symlink's is
 * relative to the link's directory) passes only with RELATIVE_WRITES, as relative writes do. */
static __always_inline int link_enter(u32 sc, int olddfd, const char *oldname, int newdfd,
                                      const char *newname, u32 flags) {
    return two_paths_enter(KIND_LINK, sc, olddfd, oldname, newdfd, newname, flags);
}

TRACEPOINT_PROBE(syscalls, sys_enter_linkat) {
    return link_enter(SC_LINKAT, args->olddfd, args->oldname, args->newdfd, args->newname,
                      args->flags);
}
TRACEPOINT_PROBE(syscalls, sys_exit_linkat) { return finish(args->ret, KIND_LINK); }
/* A symlink's target is stored as text, never resolved: no dirfd (-1). */
TRACEPOINT_PROBE(syscalls, sys_enter_symlinkat) {
    return link_enter(SC_SYMLINKAT, -1, args->oldname, args->newdfd, args->newname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_symlinkat) { return finish(args->ret, KIND_LINK); }
#ifdef HAVE_sys_enter_link
TRACEPOINT_PROBE(syscalls, sys_enter_link) {
    return link_enter(SC_LINK, -100, args->oldname, -100, args->newname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_link) { return finish(args->ret, KIND_LINK); }
#endif
#ifdef HAVE_sys_enter_symlink
TRACEPOINT_PROBE(syscalls, sys_enter_symlink) {
    return link_enter(SC_SYMLINK, -1, args->oldname, -100, args->newname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_symlink) { return finish(args->ret, KIND_LINK); }
#endif
#endif /* PROBE_LINK */

/* ---- ptrace ----------------------------------------------------------------------------- */
#ifdef PROBE_PTRACE
TRACEPOINT_PROBE(syscalls, sys_enter_ptrace) {
    if (is_self())
        return 0;
    s64 request = args->request;
    if (!PTRACE_WANTED(request)) {
        count(CNT_FILTERED);
        return 0;
    }
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    r->ptrace.request = request;
    r->ptrace.target = args->pid;
    r->ptrace.addr = args->addr;
    r->ptrace.data = args->data;
    return stash(r, KIND_PTRACE, SC_PTRACE, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_ptrace) { return finish(args->ret, KIND_PTRACE); }
#endif

/* ---- TCP: every connection's end, with its final counters --------------------------------- */
#if defined(PROBE_TCP) && defined(TCP_LAYOUT)
#define QSC_TCP_CLOSE 7
#define QSC_TCP_LISTEN 10
#define QSC_IPPROTO_TCP 6

struct tcp_owner {
    u64 cgroup_id;
    u64 ts_ns;
    u32 tgid;
    u32 tid;
    u32 uid;
    u32 gid;
    char comm[COMM_LEN];
};
/* sock -> the task that connect()ed or accept()ed it, learnt in that syscall from its fd. The
 * state changes cannot tell: most run in softirq, under whatever task was interrupted. LRU: a
 * socket whose close is missed cannot leak an entry. */
BPF_TABLE("lru_hash", u64, struct tcp_owner, tcp_owners, TCP_OWNERS);

/* Remember the caller as the owner of the TCP socket behind `fd` (also the sensor's own, so
 * that their closes are left out). */
static __always_inline void tcp_own_fd(int fd) {
    u64 sk = fd_sock(fd);
    u16 protocol = 0;
    if (!sk)
        return;
    bpf_probe_read_kernel(&protocol, sizeof(protocol), (void *)(sk + OFF_SK_PROTOCOL));
    if (protocol != QSC_IPPROTO_TCP)
        return;
    struct tcp_owner o = {};
    u64 id = bpf_get_current_pid_tgid();
    u64 ug = bpf_get_current_uid_gid();
    o.cgroup_id = bpf_get_current_cgroup_id();
    o.ts_ns = bpf_ktime_get_boot_ns();
    o.tgid = id >> 32;
    o.tid = (u32)id;
    o.uid = (u32)ug;
    o.gid = ug >> 32;
    bpf_get_current_comm(o.comm, sizeof(o.comm));
    tcp_owners.update(&sk, &o);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != QSC_IPPROTO_TCP)
        return 0;
    if (args->newstate != QSC_TCP_CLOSE)
        return 0;
    u64 sk = (u64)args->skaddr;
    struct tcp_owner *o = tcp_owners.lookup(&sk);
    if (args->oldstate == QSC_TCP_LISTEN || (o && o->tgid == SELF_TGID)) {
        tcp_owners.delete(&sk);
        return 0;
    }
    struct rec_tcp_close *r = events.ringbuf_reserve(sizeof(struct rec_tcp_close));
    if (!r) {
        count_lost(KIND_TCP_CLOSE);
        tcp_owners.delete(&sk);
        return 0;
    }
    fill_hdr(&r->hdr, KIND_TCP_CLOSE, SC_NONE);
    r->flags = 0;
    r->open_ns = 0;
    if (o) {
        r->hdr.cgroup_id = o->cgroup_id;
        r->hdr.tgid = o->tgid;
        r->hdr.tid = o->tid;
        r->hdr.uid = o->uid;
        r->hdr.gid = o->gid;
        __builtin_memcpy(r->hdr.comm, o->comm, COMM_LEN);
        r->open_ns = o->ts_ns;
        r->flags = TCPC_F_OWNER;
    }
    r->cookie = kptr(sk, OFF_SK_COOKIE);
    r->bytes_acked = kptr(sk, OFF_TCP_BYTES_ACKED);
    r->bytes_received = kptr(sk, OFF_TCP_BYTES_RECEIVED);
    r->segs_out = ku32(sk, OFF_TCP_SEGS_OUT);
    r->segs_in = ku32(sk, OFF_TCP_SEGS_IN);
    r->family = args->family;
    r->sport = args->sport;
    r->dport = args->dport;
    r->oldstate = args->oldstate;
    r->_pad = 0;
    if (args->family == QSC_AF_INET) {
        __builtin_memset(r->saddr, 0, 16);
        __builtin_memset(r->daddr, 0, 16);
        __builtin_memcpy(r->saddr, args->saddr, 4);
        __builtin_memcpy(r->daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(r->saddr, args->saddr_v6, 16);
        __builtin_memcpy(r->daddr, args->daddr_v6, 16);
    }
    events.ringbuf_submit(r, 0);
    tcp_owners.delete(&sk);
    return 0;
}
#else
static __always_inline void tcp_own_fd(int fd) {}
#endif /* PROBE_TCP */

/* A socket's protocol as the kernel knows it, read at the call: /proc is too late for a
 * socket closed at once. 0 when unknown. */
static __always_inline u32 sock_protocol(int fd) {
#if defined(KERNEL_LAYOUT) && defined(OFF_SK_PROTOCOL)
    u64 sk = fd_sock(fd);
    u16 protocol = 0;
    if (sk)
        bpf_probe_read_kernel(&protocol, sizeof(protocol), (void *)(sk + OFF_SK_PROTOCOL));
    return protocol;
#else
    return 0;
#endif
}

/* ---- network: connect, accept ----------------------------------------------------------- */
#ifdef PROBE_NET
static __always_inline int family_wanted(u16 family) {
    return family == QSC_AF_INET || family == QSC_AF_INET6 || (NET_UNIX && family == QSC_AF_UNIX);
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    tcp_own_fd(args->fd);
    if (is_self())
        return 0;
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    /* The mask keeps the size provably small for the verifier whatever clang does with the
     * clamp below (sockaddr lengths are at most 128 anyway). */
    u32 n = args->addrlen & 0xff;
    if (n > SOCKADDR_LEN)
        n = SOCKADDR_LEN;
    if (n < 2 || bpf_probe_read_user(r->sock.addr, n, args->uservaddr) != 0)
        return 0;
    if (!family_wanted(*(u16 *)r->sock.addr)) {
        count(CNT_FILTERED);
        return 0;
    }
    r->sock.fd = args->fd;
    r->sock.addrlen = n;
    r->sock.uaddr = 0;
    r->sock.ulen = 0;
    r->sock.protocol = sock_protocol(args->fd);
    r->sock._pad = 0;
    return stash(r, KIND_CONNECT, SC_CONNECT, 1);
}
TRACEPOINT_PROBE(syscalls, sys_exit_connect) { return finish(args->ret, KIND_CONNECT); }

/* accept: the peer address only exists at exit, in the caller's buffer. Accepts without an
 * address buffer, failed accepts and unwanted families are dropped here. */
static __always_inline int accept_enter(u32 sc, int fd, void *uaddr, void *ulen) {
    if (is_self() || !uaddr || !ulen)
        return 0;
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    r->sock.fd = fd;
    r->sock.addrlen = 0;
    r->sock.uaddr = (u64)uaddr;
    r->sock.ulen = (u64)ulen;
    r->sock.protocol = 6; /* accept(2) only works on stream sockets */
    r->sock._pad = 0;
    return stash(r, KIND_ACCEPT, sc, 1);
}

static __always_inline int accept_exit(s64 ret) {
    tcp_own_fd(ret);
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct inflight *r = inflight.lookup(&tid);
    if (!r)
        return 0;
    if (r->hdr.kind == KIND_ACCEPT && ret >= 0) {
        int len = 0;
        bpf_probe_read_user(&len, sizeof(len), (void *)r->sock.ulen);
        u32 n = len & 0xff;
        if (n > SOCKADDR_LEN)
            n = SOCKADDR_LEN;
        if (n >= 2 && bpf_probe_read_user(r->sock.addr, n, (void *)r->sock.uaddr) == 0 &&
            family_wanted(*(u16 *)r->sock.addr)) {
            r->hdr.ret = ret;
            r->sock.addrlen = n;
            output(r, KIND_ACCEPT);
        } else {
            count(CNT_FILTERED);
        }
    }
    inflight.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept) {
    return accept_enter(SC_ACCEPT, args->fd, args->upeer_sockaddr, args->upeer_addrlen);
}
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return accept_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_accept4) {
    return accept_enter(SC_ACCEPT4, args->fd, args->upeer_sockaddr, args->upeer_addrlen);
}
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return accept_exit(args->ret); }
#endif /* PROBE_NET */

/* ---- socket(): families worth a look (AF_PACKET) ------------------------------------------ */
#ifdef PROBE_SOCKET
TRACEPOINT_PROBE(syscalls, sys_enter_socket) {
    /* Every TCP client calls socket(): the family test comes first, before the stash. */
    int family = args->family;
    if (!SOCKET_FAMILY_WANTED(family)) {
        count(CNT_FILTERED);
        return 0;
    }
    if (is_self())
        return 0;
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    r->newsock.family = family;
    r->newsock.type = args->type;
    r->newsock.protocol = args->protocol;
    r->newsock._pad = 0;
    return stash(r, KIND_SOCKET, SC_SOCKET, 1);
}
TRACEPOINT_PROBE(syscalls, sys_exit_socket) { return finish(args->ret, KIND_SOCKET); }
#endif /* PROBE_SOCKET */

/* ---- another process's memory: process_vm_writev ---------------------------------------- */
#ifdef PROBE_VMWRITE
TRACEPOINT_PROBE(syscalls, sys_enter_process_vm_writev) {
    if (is_self())
        return 0;
#ifdef KERNEL_LAYOUT
    if ((u32)args->pid != (bpf_get_current_pid_tgid() >> 32))
        enforce(CHECK_VM_WRITE); /* the writer dies; this call's write may still land */
#endif
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    r->vm.target = args->pid;
    r->vm.liovcnt = args->liovcnt;
    r->vm.riovcnt = args->riovcnt;
    r->vm.flags = args->flags;
    return stash(r, KIND_VM_WRITE, SC_PROCESS_VM_WRITEV, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_process_vm_writev) { return finish(args->ret, KIND_VM_WRITE); }
#endif

/* ---- security.* extended attributes (file capabilities) --------------------------------- */
#ifdef PROBE_XATTR
/* Only the security. namespace is worth an event: capabilities, IMA/EVM, SELinux labels. */
static __always_inline int xattr_enter(u32 sc, int dfd, const char *path, const char *name,
                                       u64 size, u32 flags, u32 at_flags) {
    if (is_self())
        return 0;
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    if (bpf_probe_read_user_str(r->xattr.name, XATTR_NAME_LEN, name) <= 0)
        return 0;
    const char *n = r->xattr.name;
    if (!(n[0] == 's' && n[1] == 'e' && n[2] == 'c' && n[3] == 'u' && n[4] == 'r' &&
          n[5] == 'i' && n[6] == 't' && n[7] == 'y' && n[8] == '.')) {
        count(CNT_FILTERED);
        return 0;
    }
    if (path)
        read_user_path(r->xattr.path, path);
    else
        r->xattr.path[0] = 0;
    r->xattr.dfd = dfd;
    r->xattr.size = size;
    r->xattr.flags = flags;
    r->xattr.at_flags = at_flags;
    return stash(r, KIND_XATTR, sc, 1);
}

TRACEPOINT_PROBE(syscalls, sys_enter_setxattr) {
    return xattr_enter(SC_SETXATTR, QSC_AT_FDCWD, args->pathname, args->name, args->size,
                       args->flags, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_setxattr) { return finish(args->ret, KIND_XATTR); }
TRACEPOINT_PROBE(syscalls, sys_enter_lsetxattr) {
    return xattr_enter(SC_LSETXATTR, QSC_AT_FDCWD, args->pathname, args->name, args->size,
                       args->flags, 0x100 /* AT_SYMLINK_NOFOLLOW */);
}
TRACEPOINT_PROBE(syscalls, sys_exit_lsetxattr) { return finish(args->ret, KIND_XATTR); }
TRACEPOINT_PROBE(syscalls, sys_enter_fsetxattr) {
    return xattr_enter(SC_FSETXATTR, args->fd, 0, args->name, args->size, args->flags, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_fsetxattr) { return finish(args->ret, KIND_XATTR); }
#ifdef HAVE_sys_enter_setxattrat
TRACEPOINT_PROBE(syscalls, sys_enter_setxattrat) {
    struct {
        u64 value;
        u32 size;
        u32 flags;
    } xa = {};
    bpf_probe_read_user(&xa, sizeof(xa), args->uargs);
    return xattr_enter(SC_SETXATTRAT, args->dfd, args->pathname, args->name, xa.size, xa.flags,
                       args->at_flags);
}
TRACEPOINT_PROBE(syscalls, sys_exit_setxattrat) { return finish(args->ret, KIND_XATTR); }
#endif
#endif /* PROBE_XATTR */

/* ---- namespaces: unshare, setns --------------------------------------------------------- */
#ifdef PROBE_NAMESPACE
TRACEPOINT_PROBE(syscalls, sys_enter_unshare) {
    u64 flags = args->unshare_flags;
    if (!(flags & QSC_CLONE_NEW_MASK)) {
        count(CNT_FILTERED);
        return 0;
    }
    if (is_self())
        return 0;
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    r->ns.flags = flags;
    r->ns.fd = -1;
    r->ns._pad = 0;
    return stash(r, KIND_NAMESPACE, SC_UNSHARE, 1);
}
TRACEPOINT_PROBE(syscalls, sys_exit_unshare) { return finish(args->ret, KIND_NAMESPACE); }
TRACEPOINT_PROBE(syscalls, sys_enter_setns) {
    if (is_self())
        return 0;
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    r->ns.flags = (u32)args->flags;
    r->ns.fd = args->fd;
    r->ns._pad = 0;
    return stash(r, KIND_NAMESPACE, SC_SETNS, 1);
}
TRACEPOINT_PROBE(syscalls, sys_exit_setns) { return finish(args->ret, KIND_NAMESPACE); }
#endif /* PROBE_NAMESPACE */

/* ---- stdio redirected: dup2/dup3 onto fds 0-2 ------------------------------------------- */
#if defined(PROBE_DUP) && defined(KERNEL_LAYOUT)
static __always_inline int dup_enter(u32 sc, int oldfd, int newfd, u32 flags) {
    if ((u32)newfd > 2 || oldfd == newfd) {
        count(CNT_FILTERED);
        return 0;
    }
    if (is_self())
        return 0;
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    r->dup.oldfd = oldfd;
    r->dup.newfd = newfd;
    r->dup.flags = flags;
    return stash(r, KIND_DUP, sc, 1);
}

/* Judged after the call, from the fd table: what newfd is now, not what the caller claimed. */
static __always_inline int dup_exit(s64 ret) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct inflight *r = inflight.lookup(&tid);
    if (!r)
        return 0;
    if (r->hdr.kind == KIND_DUP && ret >= 0) {
        fd_kind(r->dup.newfd, &r->dup.kind, &r->dup.port, r->dup.addr);
        r->dup._pad = 0;
        if (stdio_inet(r->dup.kind)) {
            r->hdr.ret = ret;
            output(r, KIND_DUP);
        } else {
            count(CNT_FILTERED);
        }
    }
    inflight.delete(&tid);
    return 0;
}

#ifdef HAVE_sys_enter_dup2
TRACEPOINT_PROBE(syscalls, sys_enter_dup2) {
    return dup_enter(SC_DUP2, (int)args->oldfd, (int)args->newfd, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_dup2) { return dup_exit(args->ret); }
#endif
TRACEPOINT_PROBE(syscalls, sys_enter_dup3) {
    return dup_enter(SC_DUP3, (int)args->oldfd, (int)args->newfd, (u32)args->flags);
}
TRACEPOINT_PROBE(syscalls, sys_exit_dup3) { return dup_exit(args->ret); }
#endif /* PROBE_DUP */

/* ---- file times set explicitly: utimensat, utimes, utime -------------------------------- */
#ifdef PROBE_UTIMES
/* Records are large (the base path): their own stash, sized for the few in flight at once. */
BPF_PERCPU_ARRAY(utimes_scratch, struct rec_utimes, 1);
BPF_TABLE("lru_hash", u32, struct rec_utimes, utimes_inflight, 1024);

static __always_inline int explicit_time(s64 nsec) {
    return nsec != QSC_UTIME_NOW && nsec != QSC_UTIME_OMIT;
}

static __always_inline int utimes_enter(u32 sc, int dfd, const char *filename, s64 as, s64 an,
                                        s64 ms, s64 mn, u32 at_flags) {
    if (!explicit_time(an) && !explicit_time(mn)) {
        count(CNT_FILTERED); /* "now" or nothing: not a forged time */
        return 0;
    }
    if (is_self())
        return 0;
    u32 zero = 0;
    struct rec_utimes *u = utimes_scratch.lookup(&zero);
    if (!u)
        return 0;
    fill_hdr(&u->hdr, KIND_UTIMES, sc);
    u->dfd = dfd;
    u->at_flags = at_flags;
    u->atime_sec = as;
    u->atime_nsec = an;
    u->mtime_sec = ms;
    u->mtime_nsec = mn;
    u->path_len = filename ? read_user_path(u->path, filename) : 0;
    if (!filename)
        u->path[0] = 0;
    u->base_flags = 0;
    u->base_len = 0;
    u->base_depth = 0;
#ifdef KERNEL_LAYOUT
    /* Name the file now, in the caller's own context: a relative path's base is the dirfd's
     * file or the cwd; futimens (no path) names the fd's file itself. */
    if (u->path[0] != '/') {
        u64 dentry = 0, mnt = 0;
        if (dfd == QSC_AT_FDCWD) {
            u64 fs = kptr(bpf_get_current_task(), OFF_TASK_FS);
            dentry = kptr(fs, OFF_FS_PWD_DENTRY);
            mnt = kptr(fs, OFF_FS_PWD_MNT);
        } else {
            u64 file = fd_file(dfd);
            dentry = kptr(file, OFF_FILE_DENTRY);
            mnt = kptr(file, OFF_FILE_MNT);
        }
        u->base_flags = ID_F_KERNEL;
        walk_path(dentry, mnt, u->base, &u->base_len, &u->base_depth, &u->base_flags,
                  0);
    }
#endif
    u32 tid = u->hdr.tid;
    utimes_inflight.update(&tid, u);
    return 0;
}

static __always_inline int utimes_exit(s64 ret) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct rec_utimes *u = utimes_inflight.lookup(&tid);
    if (!u)
        return 0;
    u->hdr.ret = ret;
    if (events.ringbuf_output(u, sizeof(struct rec_utimes), 0) != 0)
        count_lost(KIND_UTIMES);
    utimes_inflight.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_utimensat) {
    s64 t[4] = {}; /* a non-zero initializer would land in .rodata, which bcc cannot load */
    if (!args->utimes || bpf_probe_read_user(t, sizeof(t), args->utimes) != 0)
        return 0;
    return utimes_enter(SC_UTIMENSAT, args->dfd, args->filename, t[0], t[1], t[2], t[3],
                        args->flags);
}
TRACEPOINT_PROBE(syscalls, sys_exit_utimensat) { return utimes_exit(args->ret); }
#ifdef HAVE_sys_enter_utimes
TRACEPOINT_PROBE(syscalls, sys_enter_utimes) {
    s64 t[4] = {};
    if (!args->utimes || bpf_probe_read_user(t, sizeof(t), args->utimes) != 0)
        return 0;
    return utimes_enter(SC_UTIMES, QSC_AT_FDCWD, args->filename, t[0], t[1] * 1000, t[2],
                        t[3] * 1000, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_utimes) { return utimes_exit(args->ret); }
#endif
#ifdef HAVE_sys_enter_utime
TRACEPOINT_PROBE(syscalls, sys_enter_utime) {
    s64 t[2] = {};
    if (!args->times || bpf_probe_read_user(t, sizeof(t), args->times) != 0)
        return 0;
    return utimes_enter(SC_UTIME, QSC_AT_FDCWD, args->filename, t[0], 0, t[1], 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_utime) { return utimes_exit(args->ret); }
#endif
#endif /* PROBE_UTIMES */

/* ---- memfd_create ----------------------------------------------------------------------- */
#ifdef PROBE_MEMFD
TRACEPOINT_PROBE(syscalls, sys_enter_memfd_create) {
    if (is_self())
        return 0;
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    r->path.path_len = read_user_path(r->path.path, args->uname);
    r->path.dfd = -1;
    r->path.mode = 0;
    r->path.flags = args->flags;
    r->path.uid = 0;
    r->path.gid = 0;
    return stash(r, KIND_MEMFD, SC_MEMFD_CREATE, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_memfd_create) { return finish(args->ret, KIND_MEMFD); }
#endif

/* ---- kernel modules --------------------------------------------------------------------- */
#ifdef PROBE_MODULE
static __always_inline int module_enter(u32 sc, int fd, u64 len, const char *uargs, u32 flags) {
    if (is_self())
        return 0;
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    int n = bpf_probe_read_user_str(r->module.params, PATH_LEN, uargs);
    r->module.params_len = n > 0 ? n : 0;
    r->module.fd = fd;
    r->module.flags = flags;
    r->module.len = len;
    r->module._pad = 0;
    return stash(r, KIND_MODULE, sc, 0);
}

#ifdef HAVE_sys_enter_finit_module
TRACEPOINT_PROBE(syscalls, sys_enter_init_module) {
    return module_enter(SC_INIT_MODULE, -1, args->len, args->uargs, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_init_module) { return finish(args->ret, KIND_MODULE); }
TRACEPOINT_PROBE(syscalls, sys_enter_finit_module) {
    return module_enter(SC_FINIT_MODULE, args->fd, 0, args->uargs, args->flags);
}
TRACEPOINT_PROBE(syscalls, sys_exit_finit_module) { return finish(args->ret, KIND_MODULE); }
#else
/* A kernel built without modules has no per-syscall tracepoints for them, but an attempt is
 * still worth seeing (a rootkit installer tries): watch the raw syscall entry and exit for
 * their numbers. These run for every syscall on the host, so they are raw tracepoints (the
 * program gets the registers directly, no trace record is built: about a third of the cost of
 * the raw_syscalls trace events) and test the number first. The register names (REG_ARG0..2,
 * REG_NR) are rendered per architecture; struct pt_regs is a stable layout. */
#include <asm/ptrace.h>

static __always_inline u64 reg(struct pt_regs *regs, unsigned long *field) {
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), field);
    return v;
}

RAW_TRACEPOINT_PROBE(sys_enter) {
    /* TP_PROTO(struct pt_regs *regs, long id) */
    long nr = ctx->args[1];
    if (nr != NR_INIT_MODULE && nr != NR_FINIT_MODULE)
        return 0;
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    u64 a0 = reg(regs, &regs->REG_ARG0);
    u64 a1 = reg(regs, &regs->REG_ARG1);
    u64 a2 = reg(regs, &regs->REG_ARG2);
    if (nr == NR_INIT_MODULE)
        return module_enter(SC_INIT_MODULE, -1, a1, (const char *)a2, 0);
    return module_enter(SC_FINIT_MODULE, (int)a0, 0, (const char *)a1, (u32)a2);
}

RAW_TRACEPOINT_PROBE(sys_exit) {
    /* TP_PROTO(struct pt_regs *regs, long ret) */
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    long nr = (long)reg(regs, &regs->REG_NR);
    if (nr == NR_INIT_MODULE || nr == NR_FINIT_MODULE)
        return finish((s64)ctx->args[1], KIND_MODULE);
    return 0;
}
#endif
#endif /* PROBE_MODULE */

/* ---- bpf() ------------------------------------------------------------------------------ */
#ifdef PROBE_BPF
TRACEPOINT_PROBE(syscalls, sys_enter_bpf) {
    if (is_self())
        return 0;
    int cmd = args->cmd;
    if (!BPF_CMD_WANTED(cmd)) {
        count(CNT_FILTERED);
        return 0;
    }
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    r->bpf.cmd = cmd;
    r->bpf.size = args->size;
    r->bpf.prog_type = 0;
    r->bpf.insn_cnt = 0;
    r->bpf.prog_flags = 0;
    r->bpf._pad = 0;
    __builtin_memset(r->bpf.prog_name, 0, BPF_NAME_LEN);
    if (cmd == QSC_BPF_PROG_LOAD && args->size >= 64) {
        /* union bpf_attr, BPF_PROG_LOAD: prog_type@0 insn_cnt@4 prog_flags@44 prog_name@48 */
        const char *attr = (const char *)args->uattr;
        bpf_probe_read_user(&r->bpf.prog_type, 4, attr);
        bpf_probe_read_user(&r->bpf.insn_cnt, 4, attr + 4);
        bpf_probe_read_user(&r->bpf.prog_flags, 4, attr + 44);
        bpf_probe_read_user(r->bpf.prog_name, BPF_NAME_LEN, attr + 48);
    }
    return stash(r, KIND_BPF, SC_BPF, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_bpf) { return finish(args->ret, KIND_BPF); }
#endif

/* ---- setuid family ---------------------------------------------------------------------- */
#ifdef PROBE_SETID
static __always_inline int setid_enter(u32 sc, u32 a0, u32 a1, u32 a2) {
    if (is_self())
        return 0;
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    r->setid.a0 = a0;
    r->setid.a1 = a1;
    r->setid.a2 = a2;
    r->setid._pad = 0;
    return stash(r, KIND_SETID, sc, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_setuid) { return setid_enter(SC_SETUID, args->uid, -1, -1); }
TRACEPOINT_PROBE(syscalls, sys_exit_setuid) { return finish(args->ret, KIND_SETID); }
TRACEPOINT_PROBE(syscalls, sys_enter_setgid) { return setid_enter(SC_SETGID, args->gid, -1, -1); }
TRACEPOINT_PROBE(syscalls, sys_exit_setgid) { return finish(args->ret, KIND_SETID); }
TRACEPOINT_PROBE(syscalls, sys_enter_setreuid) {
    return setid_enter(SC_SETREUID, args->ruid, args->euid, -1);
}
TRACEPOINT_PROBE(syscalls, sys_exit_setreuid) { return finish(args->ret, KIND_SETID); }
TRACEPOINT_PROBE(syscalls, sys_enter_setregid) {
    return setid_enter(SC_SETREGID, args->rgid, args->egid, -1);
}
TRACEPOINT_PROBE(syscalls, sys_exit_setregid) { return finish(args->ret, KIND_SETID); }
TRACEPOINT_PROBE(syscalls, sys_enter_setresuid) {
    return setid_enter(SC_SETRESUID, args->ruid, args->euid, args->suid);
}
TRACEPOINT_PROBE(syscalls, sys_exit_setresuid) { return finish(args->ret, KIND_SETID); }
TRACEPOINT_PROBE(syscalls, sys_enter_setresgid) {
    return setid_enter(SC_SETRESGID, args->rgid, args->egid, args->sgid);
}
TRACEPOINT_PROBE(syscalls, sys_exit_setresgid) { return finish(args->ret, KIND_SETID); }
TRACEPOINT_PROBE(syscalls, sys_enter_setfsuid) {
    return setid_enter(SC_SETFSUID, args->uid, -1, -1);
}
TRACEPOINT_PROBE(syscalls, sys_exit_setfsuid) { return finish(args->ret, KIND_SETID); }
TRACEPOINT_PROBE(syscalls, sys_enter_setfsgid) {
    return setid_enter(SC_SETFSGID, args->gid, -1, -1);
}
TRACEPOINT_PROBE(syscalls, sys_exit_setfsgid) { return finish(args->ret, KIND_SETID); }
#endif /* PROBE_SETID */

/* ---- writable+executable memory --------------------------------------------------------- */
#ifdef PROBE_MEMPROT
static __always_inline int memprot_enter(u32 sc, u64 addr, u64 len, u64 prot, u64 flags, s64 fd) {
    if (is_self())
        return 0;
    if ((prot & (QSC_PROT_WRITE | QSC_PROT_EXEC)) != (QSC_PROT_WRITE | QSC_PROT_EXEC))
        return 0;
    struct inflight *r = scratch_get();
    if (!r)
        return 0;
    r->memprot.addr = addr;
    r->memprot.len = len;
    r->memprot.prot = prot;
    r->memprot.flags = flags;
    r->memprot.fd = fd;
    return stash(r, KIND_MEMPROT, sc, 1);
}

TRACEPOINT_PROBE(syscalls, sys_enter_mmap) {
    return memprot_enter(SC_MMAP, args->addr, args->len, args->prot, args->flags, (s64)args->fd);
}
TRACEPOINT_PROBE(syscalls, sys_exit_mmap) { return finish(args->ret, KIND_MEMPROT); }
TRACEPOINT_PROBE(syscalls, sys_enter_mprotect) {
    return memprot_enter(SC_MPROTECT, args->start, args->len, args->prot, 0, -1);
}
TRACEPOINT_PROBE(syscalls, sys_exit_mprotect) { return finish(args->ret, KIND_MEMPROT); }
#ifdef HAVE_sys_enter_pkey_mprotect
TRACEPOINT_PROBE(syscalls, sys_enter_pkey_mprotect) {
    return memprot_enter(SC_PKEY_MPROTECT, args->start, args->len, args->prot, 0, args->pkey);
}
TRACEPOINT_PROBE(syscalls, sys_exit_pkey_mprotect) { return finish(args->ret, KIND_MEMPROT); }
#endif
#endif /* PROBE_MEMPROT */
