/* Makes the calls and writes fence's seccomp program and mounts deny, and reports how each went.
 *
 * Usage: syscallprobe NAME...   (the names are the CHECKS below)
 * Prints one JSON object: {"NAME": "ok" | "EPERM" | "EROFS" | ...}.  Each check runs in a child of
 * its own, so a session change or a changed terminal stays there.  tests/test_seccomp.py runs it
 * outside fence and inside (as root and as an unprivileged user) and compares.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#define MPOL_DEFAULT 0
#define Q_SYNC 0x800001
#define QCMD(cmd, type) (((cmd) << 8) | ((type) & 0xff))

static volatile unsigned char target_byte = 7;
/* Written through /proc/<child>/mem: the child's copy of this variable (same address after fork). */

static int fail(void) { return errno ? errno : EIO; }

static int check_modify_ldt(void) {
    char buf[16];
    return syscall(SYS_modify_ldt, 0, buf, sizeof buf) < 0 ? fail() : 0;  /* read the (empty) LDT */
}

static int check_uselib(void) {
    /* the kernel may lack uselib (ENOSYS) or the file (ENOENT): either way it answered, not the filter */
    return syscall(SYS_uselib, "/nonexistent-library") < 0 ? fail() : 0;
}

static int check_quotactl(void) {
    return syscall(SYS_quotactl, QCMD(Q_SYNC, 0), NULL, 0, NULL) < 0 ? fail() : 0;  /* sync every quota */
}

static int check_quotactl_fd(void) {
    int fd = open("/", O_RDONLY | O_DIRECTORY);
    long r = syscall(SYS_quotactl_fd, fd, QCMD(Q_SYNC, 0), 0, NULL);
    int err = r < 0 ? fail() : 0;
    close(fd);
    return err;
}

static void *one_page(void) {
    return mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

static int check_mbind(void) {
    char *page = one_page();
    return syscall(SYS_mbind, page, 4096, MPOL_DEFAULT, NULL, 0, 0) < 0 ? fail() : 0;
}

static int check_set_mempolicy(void) {
    return syscall(SYS_set_mempolicy, MPOL_DEFAULT, NULL, 0) < 0 ? fail() : 0;
}

static int check_set_mempolicy_home_node(void) {
    char *page = one_page();  /* no bind policy there: the kernel answers EINVAL */
    return syscall(SYS_set_mempolicy_home_node, page, 4096, 0, 0) < 0 ? fail() : 0;
}

static int check_migrate_pages(void) {
    unsigned long node0 = 1;
    return syscall(SYS_migrate_pages, 0, 8 * sizeof node0, &node0, &node0) < 0 ? fail() : 0;
}

static int check_move_pages(void) {
    void *pages[1] = {one_page()};
    int status[1];
    *(char *)pages[0] = 1;
    return syscall(SYS_move_pages, 0, 1, pages, NULL, status, 0) < 0 ? fail() : 0;  /* query only */
}

static int check_vsock(void) {
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0)
        return fail();
    close(fd);
    return 0;
}

static pid_t sleeping_child(void) {
    pid_t pid = fork();
    if (pid == 0) {
        pause();
        _exit(0);
    }
    return pid;
}

static void stop_child(pid_t pid) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static int check_pidfd_getfd(void) {
    pid_t pid = sleeping_child();
    int err = 0;
    int pidfd = syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) {
        err = fail();
    } else {
        int fd = syscall(SYS_pidfd_getfd, pidfd, 0, 0);  /* the child's stdin */
        err = fd < 0 ? fail() : 0;
        if (fd >= 0)
            close(fd);
        close(pidfd);
    }
    stop_child(pid);
    return err;
}

static int check_process_vm_writev(void) {
    pid_t pid = sleeping_child();
    unsigned char value = 9;
    struct iovec local = {&value, 1}, remote = {(void *)&target_byte, 1};
    int err = syscall(SYS_process_vm_writev, pid, &local, 1, &remote, 1, 0) < 0 ? fail() : 0;
    stop_child(pid);
    return err;
}

static int check_proc_mem_write(void) {
    pid_t pid = sleeping_child();
    char path[64];
    unsigned char value = 9;
    int err = 0;
    snprintf(path, sizeof path, "/proc/%d/mem", (int)pid);
    int fd = open(path, O_RDWR);
    if (fd < 0)
        err = fail();
    else if (pwrite(fd, &value, 1, (off_t)(unsigned long)&target_byte) != 1)
        err = fail();
    if (fd >= 0)
        close(fd);
    stop_child(pid);
    return err;
}

static int check_proc_self_mem_write(void) {
    unsigned char value = target_byte;
    int fd = open("/proc/self/mem", O_RDWR);
    int err = 0;
    if (fd < 0)
        err = fail();
    else if (pwrite(fd, &value, 1, (off_t)(unsigned long)&target_byte) != 1)
        err = fail();
    if (fd >= 0)
        close(fd);
    return err;
}

static int check_proc_sys_mount(void) {  /* EROFS when /proc/sys sits on a read-only mount */
    struct statvfs st;
    if (statvfs("/proc/sys", &st) < 0)
        return fail();
    return st.f_flag & ST_RDONLY ? EROFS : 0;
}

static int check_proc_sys_write(void) {
    int fd = open("/proc/sys/fs/lease-break-time", O_WRONLY);  /* opened for writing, nothing written */
    if (fd < 0)
        return fail();
    close(fd);
    return 0;
}

static int check_tiocsctty(void) {
    int master, slave;
    if (openpty(&master, &slave, NULL, NULL, NULL) < 0)
        return fail();
    setsid();
    return ioctl(slave, TIOCSCTTY, 0) < 0 ? fail() : 0;
}

static int check_tiocsetd(void) {
    int master, slave, ldisc = N_TTY;
    if (openpty(&master, &slave, NULL, NULL, NULL) < 0)
        return fail();
    return ioctl(slave, TIOCSETD, &ldisc) < 0 ? fail() : 0;  /* the line discipline it already has */
}

static int check_tiocsctty_steal(void) {  /* arg 1: take it even from another session (with CAP_SYS_ADMIN) */
    int master, slave;
    if (openpty(&master, &slave, NULL, NULL, NULL) < 0)
        return fail();
    setsid();
    return ioctl(slave, TIOCSCTTY, 1) < 0 ? fail() : 0;
}

static int check_tiocsctty_stdin(void) {  /* the descriptor the sandbox was given */
    return ioctl(0, TIOCSCTTY, 0) < 0 ? fail() : 0;
}

/* On a closed fd the kernel answers EBADF, the filter (which runs first) EPERM. */
static int bad_fd_ioctl(unsigned long request) { return ioctl(999, request, 0) < 0 ? fail() : 0; }
static int check_tioccons_badfd(void) { return bad_fd_ioctl(TIOCCONS); }
static int check_tiocsctty_badfd(void) { return bad_fd_ioctl(TIOCSCTTY); }
static int check_tiocsetd_badfd(void) { return bad_fd_ioctl(TIOCSETD); }

static int check_controlling_terminal(void) {  /* stdin is our controlling terminal, our group in front */
    pid_t front = tcgetpgrp(0);
    if (front < 0)
        return fail();
    return front == getpgrp() ? 0 : ESRCH;
}

static int check_tcgets(void) {  /* an ordinary tty ioctl: must stay allowed */
    int master, slave;
    struct termios t;
    if (openpty(&master, &slave, NULL, NULL, NULL) < 0)
        return fail();
    return tcgetattr(slave, &t) < 0 ? fail() : 0;
}

static const struct {
    const char *name;
    int (*run)(void);
} CHECKS[] = {
    {"modify_ldt", check_modify_ldt},
    {"uselib", check_uselib},
    {"quotactl", check_quotactl},
    {"quotactl_fd", check_quotactl_fd},
    {"mbind", check_mbind},
    {"set_mempolicy", check_set_mempolicy},
    {"set_mempolicy_home_node", check_set_mempolicy_home_node},
    {"migrate_pages", check_migrate_pages},
    {"move_pages", check_move_pages},
    {"vsock", check_vsock},
    {"pidfd_getfd", check_pidfd_getfd},
    {"process_vm_writev", check_process_vm_writev},
    {"proc_mem_write", check_proc_mem_write},
    {"proc_self_mem_write", check_proc_self_mem_write},
    {"proc_sys_write", check_proc_sys_write},
    {"proc_sys_mount", check_proc_sys_mount},
    {"tiocsctty", check_tiocsctty},
    {"tiocsctty_steal", check_tiocsctty_steal},
    {"tiocsctty_stdin", check_tiocsctty_stdin},
    {"tiocsetd", check_tiocsetd},
    {"tioccons_badfd", check_tioccons_badfd},
    {"tiocsctty_badfd", check_tiocsctty_badfd},
    {"tiocsetd_badfd", check_tiocsetd_badfd},
    {"tcgets", check_tcgets},
    {"controlling_terminal", check_controlling_terminal},
};

static const char *errno_name(int err) {
    switch (err) {
    case 0: return "ok";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EIO: return "EIO";
    case EBADF: return "EBADF";
    case EACCES: return "EACCES";
    case EINVAL: return "EINVAL";
    case ENOTTY: return "ENOTTY";
    case EROFS: return "EROFS";
    case ENOSYS: return "ENOSYS";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case ESRCH: return "ESRCH";
    case ENODEV: return "ENODEV";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    default: return NULL;
    }
}

/* The check's errno, from a child of its own (its exit status carries it). */
static int isolated(int (*run)(void)) {
    pid_t pid = fork();
    if (pid == 0) {
        errno = 0;
        _exit(run() & 0xff);
    }
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
}

int main(int argc, char **argv) {
    printf("{");
    for (int i = 1; i < argc; i++) {
        int found = 0;
        for (size_t c = 0; c < sizeof CHECKS / sizeof CHECKS[0]; c++) {
            if (strcmp(CHECKS[c].name, argv[i]) != 0)
                continue;
            found = 1;
            int err = isolated(CHECKS[c].run);
            const char *name = errno_name(err);
            if (name)
                printf("%s\"%s\": \"%s\"", i > 1 ? ", " : "", argv[i], name);
            else
                printf("%s\"%s\": \"%d\"", i > 1 ? ", " : "", argv[i], err);
        }
        if (!found) {
            fprintf(stderr, "syscallprobe: unknown check %s\n", argv[i]);
            return 2;
        }
    }
    printf("}\n");
    return 0;
}
