// mta/daemon/control.h — the control socket (a Unix-domain stream socket, mode 0660) that
// `moat queue ...` talks to. Protocol: the client sends one line "VERB [ARG]\n"; the daemon
// answers with one JSON object on one line and closes. Verbs: list [active|hold|quarantine|all],
// show ID, flush [ID], hold ID, release ID, delete ID, bounce ID; and, for the messages
// selectors pick (queue_select.h: `area=`, `from=`, `to=`, `older=MS`, `younger=MS`,
// `reason=` tokens), `list [AREA] SELECTORS`, `summary [SELECTORS]` (every area unless
// one is given) and `bulk ACTION [dry_run=1] [all_messages=1] SELECTORS` (ACTION: hold,
// release, delete, bounce, flush; refused without a selector unless all_messages=1), whose
// answer is {"ok":true,"action","dry_run","matched","acted","ids":[...],"failed":[{"id",
// "error"}]} once every selected message has been acted on. Requests are bounded
// (4 KiB); anything else gets {"ok":false,"error":...}. The answer to `list` (megabytes for
// a long queue) is written in slices across turns of the loop, each made once the socket
// has taken the one before (QueueManager::listSlice), so it never holds the loop up.
// `message ID [headers=1]` (`moat queue show ID --message|--headers`) is the one answer
// that is not all JSON: a line {"ok":true,"id","area","size"}, then exactly `size` bytes of
// the message as delivery would send it (or of its header section), in slices read on the
// thread pool, each once the socket has taken the one before; an error is the usual line alone.
// A connection with no request line within 10 s, or whose reader takes nothing for 10 minutes, is
// closed (`control_timeout`).
#pragma once
#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace moat::mta::daemon {

class QueueManager;

class ControlServer {
 public:
  ControlServer(uv_loop_t* loop, QueueManager& qm);
  ~ControlServer();
  bool start(const std::string& path, std::string& error);
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Client side, for the CLI: sends one request and returns the JSON reply (blocking; not for
// the daemon). Returns false with `error` when the daemon cannot be reached.
// `timeoutSeconds` bounds each wait for the answer.
bool controlRequest(const std::string& path, const std::string& request, std::string& reply, std::string& error,
                    int timeoutSeconds = 30);

// Client side of an answer that streams (`message`): its first line (the JSON head) in
// `head`, then every byte after it given to `sink` as it arrives, never held whole; `sink`
// returns false to stop (a write error). False with `error` when the daemon cannot be
// reached, the head is missing or the answer stops coming for `timeoutSeconds`.
bool controlStream(const std::string& path, const std::string& request, std::string& head,
                   const std::function<bool(std::string_view)>& sink, std::string& error, int timeoutSeconds = 30);

}  // namespace moat::mta::daemon
