// mta/smtp/data_decoder.cc — streaming DATA decoder: end-of-data detection that only the
// exact <CRLF>.<CRLF> satisfies (RFC 5321 §4.1.1.4, §2.3.8: the SMTP-smuggling defence),
// dot-unstuffing (§4.5.2), bare CR/LF policy, size bound and Received: counting.
// Untrusted input: every byte. State lives across feed() calls, so a mark split between two
// reads at any byte is found exactly as in one read.
#include "mta/smtp/data_decoder.h"

#include <algorithm>
#include <cstring>

#include "mta/runtime/scan.h"

namespace moat::mta::smtp {
namespace {

// RFC 5322 ftext: printable ASCII except ':'.
bool isFtext(unsigned char c) { return c >= 33 && c <= 126 && c != ':'; }
bool isWsp(char c) { return c == ' ' || c == '\t'; }

}  // namespace

DataDecoder::DataDecoder(BareLinePolicy policy, uint64_t maxSize, Framing framing)
    : policy_(policy), maxSize_(maxSize), framing_(framing) {}

void DataDecoder::put(std::string_view bytes, std::string& out) {
  if (size_ < maxSize_) out.append(bytes.data(), static_cast<size_t>(std::min<uint64_t>(bytes.size(), maxSize_ - size_)));
  size_ += bytes.size();
}

void DataDecoder::content(std::string_view bytes, std::string& out) {
  put(bytes, out);
  scanHeader(bytes);
}

void DataDecoder::lineEnd(bool real, std::string_view ending, std::string& out) {
  put(ending, out);
  headerLineEnd();
  ++lineMark_;
  state_ = State::LineStart;
  realStart_ = real;
}

void DataDecoder::bareLineEnd(bool lf, std::string& out) {
  (lf ? bareLf_ : bareCr_) = true;
  std::string_view raw = lf ? "\n" : "\r";
  lineEnd(false, policy_ == BareLinePolicy::Normalize ? std::string_view("\r\n") : raw, out);
}

size_t DataDecoder::feed(std::string_view in, std::string& out) {
  if (done_) return 0;
  size_t i = 0;
  while (i < in.size()) {
    const char c = in[i];
    switch (state_) {
      case State::LineStart:
        if (c == '.' && framing_ == Framing::Dotted) {
          state_ = State::Dot;
          ++i;
        } else {
          state_ = State::Mid;  // the same byte again, as line content
        }
        break;
      case State::Dot:
        if (c == '\r') {
          state_ = State::DotCr;
          ++i;
        } else if (c == '\n') {  // "." alone, ended by a bare LF: nothing was stuffed
          content(".", out);
          bareLineEnd(true, out);
          ++i;
        } else {
          state_ = State::Mid;  // a stuffed dot: dropped, the byte is content
        }
        break;
      case State::DotCr:
        if (c == '\n') {
          ++i;
          if (realStart_) {
            done_ = true;
            return i;
          }
          // "." between a bare line end and CRLF: a smuggling fake, kept as content.
          content(".", out);
          lineEnd(true, "\r\n", out);
        } else {
          content(".", out);
          bareLineEnd(false, out);  // then the byte again at a line start
        }
        break;
      case State::Mid: {
        // The rest of the line, and once the header section has ended every following
        // line too while each ends in CRLF and the next does not start with '.': their
        // output is their input, so they go out as one run.
        size_t j = i;
        bool crossed = false;
        for (;;) {
          j += findLineBreak(in.data() + j, in.size() - j);
          if (headerState_ != HeaderState::Ended || j + 2 >= in.size() || in[j] != '\r' || in[j + 1] != '\n' ||
              in[j + 2] == '.')
            break;
          j += 2;
          crossed = true;
        }
        if (j > i) {
          std::string_view run = in.substr(i, j - i);
          if (!nul_ && std::memchr(run.data(), '\0', run.size())) nul_ = true;
          content(run, out);
          if (crossed) {
            realStart_ = true;
            ++lineMark_;
          }
          i = j;
        } else if (c == '\r') {
          state_ = State::Cr;
          ++i;
        } else {
          bareLineEnd(true, out);
          ++i;
        }
        break;
      }
      case State::Cr:
        if (c == '\n') {
          lineEnd(true, "\r\n", out);
          ++i;
        } else {
          bareLineEnd(false, out);  // then the byte again at a line start
        }
        break;
    }
  }
  return i;
}

void DataDecoder::finish(std::string& out) {
  if (done_) return;
  if (state_ == State::Cr) bareLineEnd(false, out);
  done_ = true;
}

// Tracks header fields as they stream by: a line that starts with white space continues the
// previous field (folding), "name:" starts a field, an empty line or anything else ends the
// header section.
void DataDecoder::scanHeader(std::string_view bytes) {
  for (size_t i = 0; i < bytes.size(); ++i) {
    const char c = bytes[i];
    switch (headerState_) {
      case HeaderState::Ended:
      case HeaderState::Skip:
        return;
      case HeaderState::LineBegin:
        if (isWsp(c)) {
          headerState_ = HeaderState::Skip;
        } else if (isFtext(static_cast<unsigned char>(c))) {
          nameLen_ = 0;
          name_[nameLen_++] = (c >= 'A' && c <= 'Z') ? char(c + 32) : c;
          headerState_ = HeaderState::Name;
        } else {
          headerState_ = HeaderState::Ended;
        }
        break;
      case HeaderState::Name:
      case HeaderState::AfterName:
        if (c == ':') {
          if (nameLen_ == 8 && std::memcmp(name_, "received", 8) == 0) ++received_;
          headerState_ = HeaderState::Skip;
        } else if (isWsp(c)) {
          headerState_ = HeaderState::AfterName;  // obs-field: WSP before the colon
        } else if (headerState_ == HeaderState::Name && isFtext(static_cast<unsigned char>(c))) {
          if (nameLen_ < sizeof(name_)) name_[nameLen_] = (c >= 'A' && c <= 'Z') ? char(c + 32) : c;
          ++nameLen_;
        } else {
          headerState_ = HeaderState::Ended;
        }
        break;
    }
  }
}

void DataDecoder::headerLineEnd() {
  // An empty line ends the header section; so does a line that never reached its colon.
  if (headerState_ == HeaderState::Skip)
    headerState_ = HeaderState::LineBegin;
  else
    headerState_ = HeaderState::Ended;
}

}  // namespace moat::mta::smtp
