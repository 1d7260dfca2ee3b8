# cython: language_level=3, boundscheck=False, wraparound=False
"""Plaintext TCP relay with splice(2): sockets -> pipe -> socket, no user-space copies.

`SpliceEngine` owns one epoll instance and one native worker thread that never holds the
GIL. Python hands it pairs of connected stream sockets (`start`); the worker moves bytes
until both directions have closed, or one side resets, or Python cancels, then queues a
completion record and signals an eventfd (`fileno`) that asyncio watches (`completed`).
"""

from libc.errno cimport EAGAIN, ECONNRESET, EINTR, errno
from libc.stdint cimport uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, realloc
from posix.fcntl cimport F_GETFL, F_SETFL, O_CLOEXEC, O_NONBLOCK
from posix.stat cimport S_ISSOCK, fstat, struct_stat
from posix.unistd cimport close, read, write

import os

# Bytes per flow before the pipe grows; mirrors ztunnel's copy buffer growth
# (1 KiB -> 16 KiB after 128 KiB -> 256 KiB after 10 MiB), scaled to pipe sizes.
cdef enum:
    GROW_1_AFTER = 128 * 1024
    GROW_1_SIZE = 256 * 1024
    GROW_2_AFTER = 10 * 1024 * 1024
    GROW_2_SIZE = 1024 * 1024
    # Reads per flow per wakeup, so one busy relay cannot starve the others.
    READS_PER_WAKEUP = 16
    MAX_EVENTS = 256


cdef int _sock_error(int fd) noexcept nogil:
    """The socket's pending error (and clears it); ECONNRESET when the query fails."""
    cdef int err = 0
    cdef socklen_t size = sizeof(err)
    if getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &size) < 0:
        return ECONNRESET
    return err


cdef void _close_socket(int fd, bint reset) noexcept nogil:
    cdef linger lg
    if reset:
        # Linger {1, 0} makes close() send RST, so the peer sees the reset we saw.
        lg.l_onoff = 1
        lg.l_linger = 0
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))
    close(fd)


cdef void _teardown(Engine *e, Pump *p, int error) noexcept nogil:
    """Closes everything the pump owns; a non-zero error resets both sockets."""
    cdef int side
    cdef int d
    p.error = error
    p.dead = 1
    for side in range(2):
        if p.in_epoll[side]:
            epoll_ctl(e.epfd, EPOLL_CTL_DEL, p.fd[side], NULL)
            p.in_epoll[side] = 0
        _close_socket(p.fd[side], error != 0)
    for d in range(2):
        close(p.flow[d].pipe_r)
        close(p.flow[d].pipe_w)


cdef void _grow_pipe(Flow *f) noexcept nogil:
    cdef int size = 0
    if f.stage == 0 and f.moved >= GROW_1_AFTER:
        size = GROW_1_SIZE
    elif f.stage == 1 and f.moved >= GROW_2_AFTER:
        size = GROW_2_SIZE
    if size == 0:
        return
    f.stage += 1
    # EPERM (over pipe-max-size or the per-user pipe budget) keeps the current pipe.
    size = fcntl(f.pipe_w, F_SETPIPE_SZ, size)
    if size > 0:
        f.chunk = <size_t>size


cdef int _progress(Flow *f) noexcept nogil:
    """Moves bytes until a socket would block; 0, or the errno that ends the pump."""
    cdef ssize_t n
    cdef int reads = 0
    if f.done:
        return 0
    while True:
        while f.pending > 0:
            n = splice(f.pipe_r, NULL, f.dst, NULL, f.pending,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n < 0:
                if errno == EINTR:
                    continue
                return 0 if errno == EAGAIN else errno
            f.pending -= <size_t>n
            f.moved += <uint64_t>n
        if f.eof:
            # Pipe drained after EOF: pass the half-close on; the other flow goes on.
            if shutdown(f.dst, SHUT_WR) < 0:
                n = errno
                return _sock_error(f.dst) or <int>n
            f.done = 1
            return 0
        if reads == READS_PER_WAKEUP:
            return 0
        reads += 1
        _grow_pipe(f)
        n = splice(f.src, NULL, f.pipe_w, NULL, f.chunk,
                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
        if n < 0:
            if errno == EINTR:
                continue
            return 0 if errno == EAGAIN else errno
        if n == 0:
            f.eof = 1
        else:
            f.pending = <size_t>n


cdef uint32_t _wanted(Pump *p, int side) noexcept nogil:
    """Events worth waiting for on one side; writability only while bytes are stuck."""
    cdef uint32_t mask = 0
    cdef Flow *reading = &p.flow[side]
    cdef Flow *writing = &p.flow[1 - side]
    if not reading.eof and reading.pending == 0:
        mask |= EPOLLIN
    if not writing.done and writing.pending > 0:
        mask |= EPOLLOUT
    return mask


cdef int _register(Engine *e, Pump *p, int side) noexcept nogil:
    """Brings the epoll registration in line with _wanted; returns 0 or an errno."""
    cdef epoll_event ev
    cdef uint32_t mask = _wanted(p, side)
    cdef int op
    if p.in_epoll[side]:
        if mask == p.mask[side]:
            return 0
        op = EPOLL_CTL_MOD
    elif mask == 0:
        return 0
    else:
        op = EPOLL_CTL_ADD
    ev.events = mask
    # The low pointer bit carries the side; Pump is malloc-aligned so it is free.
    ev.data.ptr = <void *>(<uintptr_t>p | <uintptr_t>side)
    if epoll_ctl(e.epfd, op, p.fd[side], &ev) < 0:
        return errno
    p.mask[side] = mask
    p.in_epoll[side] = 1
    return 0


cdef void _on_event(Engine *e, Pump *p, int side, uint32_t events) noexcept nogil:
    cdef int err = 0
    cdef int d
    if events & EPOLLERR:
        err = _sock_error(p.fd[side])
    d = 0
    while err == 0 and d < 2:
        err = _progress(&p.flow[d])
        d += 1
    if err:
        _teardown(e, p, err)
        return
    if p.flow[0].done and p.flow[1].done:
        _teardown(e, p, 0)
        return
    if events & (EPOLLHUP | EPOLLERR) and _wanted(p, side) == 0:
        # Level-triggered HUP fires even with no events asked for: park the side until
        # it has work again; a reset there would be an error we already checked for.
        err = _sock_error(p.fd[side])
        if err:
            _teardown(e, p, err)
            return
        epoll_ctl(e.epfd, EPOLL_CTL_DEL, p.fd[side], NULL)
        p.in_epoll[side] = 0
    err = _register(e, p, 0) or _register(e, p, 1)
    if err:
        _teardown(e, p, err)


cdef void _unlink(Engine *e, Pump *p) noexcept nogil:
    if p.prev != NULL:
        p.prev.next = p.next
    else:
        e.active = p.next
    if p.next != NULL:
        p.next.prev = p.prev
    p.prev = NULL
    p.next = NULL


cdef void _activate(Engine *e, Pump *p) noexcept nogil:
    p.prev = NULL
    p.next = e.active
    if e.active != NULL:
        e.active.prev = p
    e.active = p


cdef Pump *_retire(Engine *e, Pump *p, Pump *retired) noexcept nogil:
    """Moves a dead pump from the active list to the front of `retired`."""
    _unlink(e, p)
    p.next = retired
    return p


cdef void _publish(Engine *e, Pump *retired) noexcept nogil:
    """Hands completed pumps to Python (oldest first) and signals the eventfd."""
    cdef Pump *head = NULL
    cdef Pump *tail = retired
    cdef Pump *nxt
    cdef uint64_t one = 1
    if retired == NULL:
        return
    while retired != NULL:
        nxt = retired.next
        retired.next = head
        head = retired
        retired = nxt
    pthread_mutex_lock(&e.lock)
    if e.finished_tail != NULL:
        e.finished_tail.next = head
    else:
        e.finished = head
    e.finished_tail = tail
    pthread_mutex_unlock(&e.lock)
    write(e.done_fd, &one, sizeof(one))


cdef Pump *_take_commands(Engine *e, Pump *retired, bint *stop) noexcept nogil:
    """Registers new pumps, then applies cancels; returns `retired` plus pumps ended."""
    cdef uint64_t counter
    cdef Pump *p
    cdef size_t i
    cdef int err
    read(e.wake_fd, &counter, sizeof(counter))
    # Held throughout so a cancel issued right after start() finds its pump registered.
    pthread_mutex_lock(&e.lock)
    while e.incoming != NULL:
        p = e.incoming
        e.incoming = p.next
        _activate(e, p)
        err = _register(e, p, 0) or _register(e, p, 1)
        if err:
            _teardown(e, p, err)
            retired = _retire(e, p, retired)
    # Cancels are rare, so a scan of the active list is cheaper than an index.
    for i in range(e.n_cancels):
        p = e.active
        while p != NULL and p.id != e.cancels[i]:
            p = p.next
        if p != NULL:
            _teardown(e, p, ECANCELED)
            retired = _retire(e, p, retired)
    e.n_cancels = 0
    stop[0] = e.stopping
    pthread_mutex_unlock(&e.lock)
    return retired


cdef void *_worker_main(void *arg) noexcept nogil:
    cdef Engine *e = <Engine *>arg
    cdef epoll_event events[MAX_EVENTS]
    cdef Pump *retired
    cdef Pump *p
    cdef uintptr_t tagged
    cdef bint stop = 0
    cdef int i
    cdef int n
    while not stop:
        n = epoll_wait(e.epfd, events, MAX_EVENTS, -1)
        if n < 0:
            if errno == EINTR:
                continue
            break
        # Dead pumps stay allocated until the batch ends: later events may name them.
        retired = NULL
        for i in range(n):
            if events[i].data.ptr == NULL:
                retired = _take_commands(e, retired, &stop)
                continue
            tagged = <uintptr_t>events[i].data.ptr
            p = <Pump *>(tagged & ~(<uintptr_t>1))
            if p.dead:
                continue
            _on_event(e, p, <int>(tagged & 1), events[i].events)
            if p.dead:
                retired = _retire(e, p, retired)
        _publish(e, retired)
    # Stopping (or epoll failed): refuse new pumps, reset the rest as cancelled.
    retired = NULL
    pthread_mutex_lock(&e.lock)
    e.stopping = 1
    while e.incoming != NULL:
        p = e.incoming
        e.incoming = p.next
        _activate(e, p)
    pthread_mutex_unlock(&e.lock)
    while e.active != NULL:
        p = e.active
        _teardown(e, p, ECANCELED)
        retired = _retire(e, p, retired)
    _publish(e, retired)
    return NULL


cdef int _check_stream_socket(int fd) except -1:
    cdef struct_stat st
    cdef int kind = 0
    cdef socklen_t size = sizeof(kind)
    if fstat(fd, &st) < 0:
        err = errno
        raise OSError(err, f"fd {fd}: {os.strerror(err)}")
    if not S_ISSOCK(st.st_mode):
        raise ValueError(f"fd {fd} is not a socket")
    if getsockopt(fd, SOL_SOCKET, SO_TYPE, &kind, &size) < 0 or kind != SOCK_STREAM:
        raise ValueError(f"fd {fd} is not a stream socket")
    return 0


cdef Pump *_new_pump(int fd_a, int fd_b) except NULL:
    """A pump for two checked sockets, with its two pipes; raises naming the fds."""
    cdef Pump *p = <Pump *>calloc(1, sizeof(Pump))
    cdef int pipes[2]
    cdef int d
    if p == NULL:
        raise MemoryError(f"relay of fds {fd_a}, {fd_b}: no memory")
    for d in range(2):
        if pipe2(pipes, O_NONBLOCK | O_CLOEXEC) < 0:
            err = errno
            if d == 1:
                close(p.flow[0].pipe_r)
                close(p.flow[0].pipe_w)
            free(p)
            raise OSError(err, f"relay of fds {fd_a}, {fd_b}: pipe: {os.strerror(err)}")
        p.flow[d].pipe_r = pipes[0]
        p.flow[d].pipe_w = pipes[1]
        p.flow[d].chunk = <size_t>fcntl(pipes[1], F_GETPIPE_SZ)
    p.fd[0] = fd_a
    p.fd[1] = fd_b
    for d in range(2):
        # tcp_splice_read blocks unless the socket itself is O_NONBLOCK.
        fcntl(p.fd[d], F_SETFL, fcntl(p.fd[d], F_GETFL) | O_NONBLOCK)
        p.flow[d].src = p.fd[d]
        p.flow[d].dst = p.fd[1 - d]
    return p


cdef class SpliceEngine:
    """One epoll loop on one native thread relaying socket pairs with splice(2)."""

    cdef Engine e
    cdef pthread_t thread
    cdef bint running
    cdef bint closed
    cdef uint64_t next_id
    cdef set live

    def __cinit__(self):
        self.e.epfd = -1
        self.e.wake_fd = -1
        self.e.done_fd = -1
        pthread_mutex_init(&self.e.lock, NULL)
        self.live = set()
        self.next_id = 1

    def __init__(self) -> None:
        cdef epoll_event ev
        self.e.epfd = epoll_create1(EPOLL_CLOEXEC)
        self.e.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        self.e.done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.e.epfd < 0 or self.e.wake_fd < 0 or self.e.done_fd < 0:
            err = errno
            self._close_fds()
            raise OSError(err, f"splice engine: epoll/eventfd: {os.strerror(err)}")
        ev.events = EPOLLIN
        ev.data.ptr = NULL
        epoll_ctl(self.e.epfd, EPOLL_CTL_ADD, self.e.wake_fd, &ev)
        err = pthread_create(&self.thread, NULL, _worker_main, &self.e)
        if err:
            self._close_fds()
            raise OSError(err, f"splice engine: worker thread: {os.strerror(err)}")
        self.running = 1

    def fileno(self) -> int:
        """The completion eventfd: readable when `completed()` has records."""
        return self.e.done_fd

    def start(self, int fd_a, int fd_b) -> int:
        """Relays fd_a <-> fd_b; on success the engine owns (and closes) both fds."""
        cdef Pump *p
        if self.closed:
            raise ValueError("splice engine is closed")
        if fd_a == fd_b:
            raise ValueError(f"cannot relay fd {fd_a} to itself")
        _check_stream_socket(fd_a)
        _check_stream_socket(fd_b)
        p = _new_pump(fd_a, fd_b)
        p.id = self.next_id
        self.next_id += 1
        pthread_mutex_lock(&self.e.lock)
        stopping = self.e.stopping
        if not stopping:
            p.next = self.e.incoming
            self.e.incoming = p
        pthread_mutex_unlock(&self.e.lock)
        if stopping:
            close(p.flow[0].pipe_r)
            close(p.flow[0].pipe_w)
            close(p.flow[1].pipe_r)
            close(p.flow[1].pipe_w)
            free(p)
            raise RuntimeError(f"splice engine worker has stopped; fds {fd_a}, {fd_b}")
        self._wake()
        self.live.add(p.id)
        return p.id

    def cancel(self, uint64_t pump_id) -> None:
        """Resets both sockets of a running pump; it completes with ECANCELED."""
        cdef uint64_t *grown
        if self.closed or pump_id not in self.live:
            return
        pthread_mutex_lock(&self.e.lock)
        if self.e.n_cancels == self.e.cap_cancels:
            grown = <uint64_t *>realloc(self.e.cancels,
                                        (self.e.cap_cancels * 2 + 8) * sizeof(uint64_t))
            if grown == NULL:
                pthread_mutex_unlock(&self.e.lock)
                raise MemoryError(f"splice engine: no memory to cancel pump {pump_id}")
            self.e.cancels = grown
            self.e.cap_cancels = self.e.cap_cancels * 2 + 8
        self.e.cancels[self.e.n_cancels] = pump_id
        self.e.n_cancels += 1
        pthread_mutex_unlock(&self.e.lock)
        self._wake()

    def completed(self) -> list:
        """Drains finished pumps as (pump_id, a_to_b, b_to_a, errno) tuples."""
        cdef uint64_t counter
        cdef Pump *p
        cdef Pump *nxt
        if self.e.done_fd >= 0:
            read(self.e.done_fd, &counter, sizeof(counter))
        pthread_mutex_lock(&self.e.lock)
        p = self.e.finished
        self.e.finished = NULL
        self.e.finished_tail = NULL
        pthread_mutex_unlock(&self.e.lock)
        records = []
        while p != NULL:
            records.append((p.id, p.flow[0].moved, p.flow[1].moved, p.error))
            self.live.discard(p.id)
            nxt = p.next
            free(p)
            p = nxt
        return records

    def active(self) -> int:
        """Pumps started and not yet drained by `completed()`."""
        return len(self.live)

    def close(self) -> None:
        """Stops the worker; running pumps are reset and reported with ECANCELED."""
        if self.closed:
            return
        self.closed = 1
        if self.running:
            pthread_mutex_lock(&self.e.lock)
            self.e.stopping = 1
            pthread_mutex_unlock(&self.e.lock)
            self._wake()
            with nogil:
                pthread_join(self.thread, NULL)
            self.running = 0
        self._close_fds()

    def __dealloc__(self):
        cdef Pump *p
        cdef Pump *nxt
        self.close()
        p = self.e.finished
        while p != NULL:
            nxt = p.next
            free(p)
            p = nxt
        self.e.finished = NULL
        free(self.e.cancels)
        pthread_mutex_destroy(&self.e.lock)

    cdef void _wake(self) noexcept:
        cdef uint64_t one = 1
        write(self.e.wake_fd, &one, sizeof(one))

    cdef void _close_fds(self) noexcept:
        if self.e.epfd >= 0:
            close(self.e.epfd)
        if self.e.wake_fd >= 0:
            close(self.e.wake_fd)
        if self.e.done_fd >= 0:
            close(self.e.done_fd)
        self.e.epfd = -1
        self.e.wake_fd = -1
        self.e.done_fd = -1
