/*
 * postroom-deliver - the native `postroom` entry: hands `postroom deliver ARGS...` to the
 * warm delivery server (deliver/deliverd.py) and runs everything else in Python.
 *
 * SYNOPSIS
 *     postroom deliver [procmail's arguments]     (the mail on stdin)
 *     postroom SUBCOMMAND ...                      (exec'd: the Python launcher)
 *
 * DESCRIPTION
 *     Installed by `make venv` as .venv/bin/postroom when a C compiler exists (see
 *     deliver/clientbuild.py, which also defines the two compiled-in paths):
 *       POSTROOM_LAUNCHER   the Python launcher (deliver.fastclient.launcher_script)
 *       POSTROOM_SOCKET     the server socket used when $POSTROOM_DELIVERD is unset;
 *                           $POSTROOM_DELIVERD empty means: never use a server.
 *     For `deliver` it speaks deliver.fastclient's protocol, byte for byte: it connects
 *     to the user's own socket, SOCKET.UID (made by the server for the user's warm
 *     process, mode 0600), and when that is missing or refuses, to SOCKET; it checks with SO_PEERCRED that the server runs as root or as this
 *     user, and sends MAGIC "PRD1", a 4-byte big-endian body length and the body (umask
 *     in octal, argc, the arguments, the NAME=value environment entries, NUL-separated)
 *     with fds 0, 1, 2 and an O_PATH fd of its cwd attached (SCM_RIGHTS).  The server
 *     answers 'A' (accepted) or 'R' (refused); after 'A', 'E' + exit status or 'K' +
 *     the signal that killed the delivery.
 *
 * GUARANTEES
 *     Nothing depends on the server: no socket, a refused connection, a server of
 *     another uid, 'R', or the connection ending before 'A' all make this program exec
 *     the Python launcher with "--no-server deliver ARGS...", which delivers in process
 *     exactly as if no server existed.  The server sends 'A' before any delivery
 *     starts, so the fallback can never deliver twice.  After 'A' the server owns the
 *     delivery; a connection that ends without a status exits 75 (EX_TEMPFAIL) so the
 *     MTA retries.  `--explain` and any -v option run in Python (they deliver nothing).
 *     Every system call is checked; nothing is copied without a bound.
 *
 * DIAGNOSTICS
 *     "postroom deliver: the delivery server went away, mail deferred (75)" on stderr;
 *     exit 75 when the launcher cannot be exec'd.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef POSTROOM_LAUNCHER
#error "build with -DPOSTROOM_LAUNCHER=\"/path/to/the/python/launcher\""
#endif
#ifndef POSTROOM_SOCKET
#define POSTROOM_SOCKET "/run/postroom/deliverd.sock"
#endif

#define TEMPFAIL 75
#define MAX_REQUEST (4u << 20)   /* deliverd.MAX_REQUEST: argv + environment */

extern char **environ;

/* Run the Python launcher: the in-process path, and every other subcommand. */
static void exec_launcher(int argc, char **argv, int no_server)
{
    char **args = calloc((size_t)argc + 2, sizeof *args);
    int n = 0;
    if (args == NULL) {
        fputs("postroom: out of memory\n", stderr);
        exit(TEMPFAIL);
    }
    args[n++] = argv[0];
    if (no_server)
        args[n++] = "--no-server";
    for (int i = 1; i < argc; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    execv(POSTROOM_LAUNCHER, args);
    fprintf(stderr, "postroom: cannot run %s: %s\n", POSTROOM_LAUNCHER, strerror(errno));
    exit(TEMPFAIL);
}

/* deliver.fastclient.wants_in_process: --explain and -v deliver nothing. */
static int wants_in_process(int argc, char **argv)
{
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--explain") == 0)
            return 1;
        if (a[0] == '-' && a[1] != '-' && strchr(a + 1, 'v') != NULL)
            return 1;
    }
    return 0;
}

/* A growing byte buffer with a hard cap; returns -1 past MAX_REQUEST. */
struct buf { char *data; size_t len, cap; };

static int buf_add(struct buf *b, const void *p, size_t n)
{
    if (n > MAX_REQUEST || b->len > MAX_REQUEST - n)
        return -1;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (d == NULL)
            return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static int buf_field(struct buf *b, const char *s, int first)
{
    if (!first && buf_add(b, "", 1) < 0)     /* the NUL separator */
        return -1;
    return buf_add(b, s, strlen(s));
}

/* MAGIC, length, body: deliver.fastclient.encode_request. */
static int encode_request(struct buf *b, int argc, char **argv)
{
    char num[32];
    mode_t mask = umask(077);
    umask(mask);
    if (buf_add(b, "PRD1\0\0\0\0", 8) < 0)
        return -1;
    snprintf(num, sizeof num, "%o", (unsigned)mask);
    if (buf_field(b, num, 1) < 0)
        return -1;
    snprintf(num, sizeof num, "%d", argc - 2);
    if (buf_field(b, num, 0) < 0)
        return -1;
    for (int i = 2; i < argc; i++)
        if (buf_field(b, argv[i], 0) < 0)
            return -1;
    for (char **e = environ; e != NULL && *e != NULL; e++) {
        const char *eq = strchr(*e, '=');
        if (eq == NULL || eq == *e)          /* the server ignores these too */
            continue;
        if (buf_field(b, *e, 0) < 0)
            return -1;
    }
    uint32_t body = (uint32_t)(b->len - 8);
    b->data[4] = (char)(body >> 24);
    b->data[5] = (char)(body >> 16);
    b->data[6] = (char)(body >> 8);
    b->data[7] = (char)body;
    return 0;
}

static ssize_t read_full(int fd, unsigned char *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return got ? (ssize_t)got : -1;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* Connect and check the server's uid; -1 (fall back) on any failure. */
static int connect_server(const char *path)
{
    struct sockaddr_un sa;
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (strlen(path) >= sizeof sa.sun_path)
        return -1;
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    while (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (errno != EINTR) {
            close(s);
            return -1;
        }
    }
    /* Only a server running as root or as ourselves gets our fds and environment:
     * anyone could have put a socket at a path named in the environment. */
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || len != sizeof cred
        || (cred.uid != 0 && cred.uid != geteuid())) {
        close(s);
        return -1;
    }
    return s;
}

/* Send the request with fds 0, 1, 2 and cwd; 0 when all of it went out. */
static int send_request(int s, const struct buf *b, int cwd)
{
    int fds[4] = {0, 1, 2, cwd};
    union { struct cmsghdr h; char space[CMSG_SPACE(sizeof fds)]; } ctl;
    struct iovec iov = {b->data, b->len};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    memset(&ctl, 0, sizeof ctl);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.space;
    msg.msg_controllen = sizeof ctl.space;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    ssize_t sent;
    do
        sent = sendmsg(s, &msg, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent < 0)
        return -1;
    size_t off = (size_t)sent;
    while (off < b->len) {
        ssize_t w = send(s, b->data + off, b->len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        off += (size_t)w;
    }
    return 0;
}

/* One server: the exit status, -1 when nothing was started (fall back), or -2 when
 * the connection ended after 'A' without a status. */
static int attempt(const char *path, const struct buf *b, int cwd, unsigned char answer[2])
{
    int s = connect_server(path);
    if (s < 0)
        return -1;
    int rc = send_request(s, b, cwd);
    if (rc < 0 || read_full(s, answer, 1) != 1 || answer[0] != 'A') {
        close(s);
        return -1;                /* before 'A' nothing was started */
    }
    ssize_t n = read_full(s, answer, 2);
    close(s);
    return n == 2 ? 0 : -2;
}

/* The exit status of the delivery, or -1 to fall back (nothing was started).  The
 * per-user socket (PATH.UID, deliver.fastclient.user_socket_path) is tried first: the
 * user's own warm process answers there, one process to wake instead of three; a
 * refusal there costs nothing, the server's own socket is asked next. */
static int relay(int argc, char **argv)
{
    const char *path = getenv("POSTROOM_DELIVERD");
    if (path == NULL)
        path = POSTROOM_SOCKET;
    if (path[0] == '\0' || wants_in_process(argc, argv))
        return -1;
    struct buf b = {NULL, 0, 0};
    if (encode_request(&b, argc, argv) < 0) {
        free(b.data);
        return -1;                /* too large: the in-process path reports it */
    }
    /* O_PATH: a cwd we may search but not read (a 0711 home) still goes across. */
    int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (cwd < 0) {
        free(b.data);
        return -1;
    }
    unsigned char answer[2];
    char mine[sizeof ((struct sockaddr_un *)0)->sun_path];
    int got = -1;
    int len = snprintf(mine, sizeof mine, "%s.%u", path, (unsigned)geteuid());
    if (len > 0 && (size_t)len < sizeof mine)
        got = attempt(mine, &b, cwd, answer);
    if (got == -1)
        got = attempt(path, &b, cwd, answer);
    close(cwd);
    free(b.data);
    if (got == -1)
        return -1;
    if (got == 0 && answer[0] == 'E')
        return answer[1];
    if (got == 0 && answer[0] == 'K') {
        /* Die of the same signal, as the delivering process did.  SIGKILL and SIGSTOP
         * refuse sigaction (they need no reset); the kill is sent regardless. */
        struct sigaction sa;
        sigset_t set;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        sigemptyset(&sa.sa_mask);
        (void)sigaction(answer[1], &sa, NULL);
        if (sigemptyset(&set) == 0 && sigaddset(&set, answer[1]) == 0)
            (void)sigprocmask(SIG_UNBLOCK, &set, NULL);
        (void)kill(getpid(), answer[1]);
        return (128 + answer[1]) & 0xFF;
    }
    static const char gone[] =
        "postroom deliver: the delivery server went away, mail deferred (75)\n";
    ssize_t ignored = write(2, gone, sizeof gone - 1);
    (void)ignored;
    return TEMPFAIL;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "deliver") == 0) {
        int status = relay(argc, argv);
        if (status >= 0)
            return status;
        exec_launcher(argc, argv, 1);
    }
    exec_launcher(argc, argv, 0);
    return TEMPFAIL;              /* not reached */
}
