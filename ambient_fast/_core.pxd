# C declarations for the splice engine: the kernel calls it makes, its per-relay state.

from libc.stdint cimport uint32_t, uint64_t


cdef extern from "<errno.h>" nogil:
    enum: ECANCELED


cdef extern from "<fcntl.h>" nogil:
    # The offsets are loff_t*; the engine passes NULL (sockets and pipes have none).
    ssize_t splice(int fd_in, void *off_in, int fd_out, void *off_out,
                   size_t len, unsigned int flags)
    int fcntl(int fd, int cmd, ...)
    enum: SPLICE_F_MOVE
    enum: SPLICE_F_NONBLOCK
    enum: F_GETPIPE_SZ
    enum: F_SETPIPE_SZ


cdef extern from "<unistd.h>" nogil:
    int pipe2(int *pipefd, int flags)


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64

    struct epoll_event:
        uint32_t events
        epoll_data_t data

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum: EPOLL_CLOEXEC
    enum: EPOLL_CTL_ADD
    enum: EPOLL_CTL_MOD
    enum: EPOLL_CTL_DEL
    enum: EPOLLIN
    enum: EPOLLOUT
    enum: EPOLLERR
    enum: EPOLLHUP


cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum: EFD_CLOEXEC
    enum: EFD_NONBLOCK


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t

    struct linger:
        int l_onoff
        int l_linger

    int shutdown(int fd, int how)
    int setsockopt(int fd, int level, int name, const void *value, socklen_t size)
    int getsockopt(int fd, int level, int name, void *value, socklen_t *size)
    enum: SHUT_WR
    enum: SOL_SOCKET
    enum: SO_ERROR
    enum: SO_LINGER
    enum: SO_TYPE
    enum: SOCK_STREAM


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_t:
        pass

    ctypedef struct pthread_mutex_t:
        pass

    int pthread_create(pthread_t *thread, void *attr,
                       void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)
    int pthread_mutex_init(pthread_mutex_t *mutex, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *mutex)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)


# One direction of a relay: src socket -> pipe -> dst socket.
cdef struct Flow:
    int src
    int dst
    int pipe_r
    int pipe_w
    size_t pending          # bytes sitting in the pipe that dst has not taken yet
    size_t chunk            # bytes asked of src per splice: the pipe's capacity
    int stage               # pipe growth steps taken (see _grow_pipe)
    uint64_t moved          # bytes delivered to dst
    bint eof                # src said EOF
    bint done               # EOF seen, pipe drained and dst shut down for writing


# One relay ("pump"): two sockets, two flows. Side 0 is socket a, side 1 is socket b;
# flow[0] reads side 0 (a->b) and flow[1] reads side 1 (b->a).
cdef struct Pump:
    uint64_t id
    int fd[2]
    uint32_t mask[2]        # events asked of epoll for each side
    bint in_epoll[2]        # whether the side is registered (parked sides are not)
    Flow flow[2]
    int error               # errno the pump ended with; 0 = both sides closed cleanly
    bint dead               # torn down; memory is freed by Python after completed()
    Pump *prev
    Pump *next


# State shared between Python and the worker. Fields marked "locked" need `lock`.
cdef struct Engine:
    int epfd
    int wake_fd             # Python -> worker: new pumps, cancels, stop
    int done_fd             # worker -> Python: completed pumps are waiting
    pthread_mutex_t lock
    Pump *incoming          # locked: started, not yet registered by the worker
    uint64_t *cancels       # locked: pump ids Python asked to cancel
    size_t n_cancels        # locked
    size_t cap_cancels      # locked
    bint stopping           # locked
    Pump *finished          # locked: completed pumps for Python, oldest first
    Pump *finished_tail     # locked
    Pump *active            # worker only: registered pumps
