// filters/attachments/attachments.cc — see attachments.h.
#include "filters/attachments/attachments.h"

#include <re2/re2.h>

#include <algorithm>

#include "filters/attachments/zip.h"

namespace moat::filters::attachments {

namespace {

std::string asciiLower(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

bool endsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Windows drops trailing dots and blanks, so "a.exe. " opens as "a.exe".
std::string_view trimTrailing(std::string_view s) {
  while (!s.empty() && (s.back() == '.' || s.back() == ' ' || s.back() == '\t' || s.back() == '\0'))
    s.remove_suffix(1);
  return s;
}

// The source line of element `i` of [attachments].key, for FILE:LINE of one bad entry.
int elementLine(const policy::Config& config, const std::string& key, size_t i, int fallback) {
  if (!config.toml) return fallback;
  auto* arr = config.toml->at_path("attachments." + key).as_array();
  if (!arr || i >= arr->size()) return fallback;
  int line = static_cast<int>((*arr)[i].source().begin.line);
  return line > 0 ? line : fallback;
}

std::vector<std::string> readExtensions(policy::Section& s) {
  std::vector<std::string> out;
  for (const auto& raw : s.getStringArray("block_extensions")) {
    std::string ext = asciiLower(raw);
    while (!ext.empty() && ext.front() == '.') ext.erase(0, 1);
    if (ext.empty() || ext.find_first_of("/\\ ") != std::string::npos) {
      s.error("block_extensions", "\"" + raw + "\" is not a file extension");
      continue;
    }
    out.push_back(ext);
  }
  return out;
}

std::vector<std::string> readTypes(policy::Section& s) {
  std::vector<std::string> out;
  for (const auto& raw : s.getStringArray("block_types")) {
    std::string type = asciiLower(raw);
    auto slash = type.find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 == type.size()) {
      s.error("block_types", "\"" + raw + "\" is not a content type (type/subtype or type/*)");
      continue;
    }
    out.push_back(type);
  }
  return out;
}

std::vector<NamePattern> readNames(const policy::Config& config, policy::Section& s, policy::Errors& errors) {
  std::vector<NamePattern> out;
  auto patterns = s.getStringArray("block_names");
  for (size_t i = 0; i < patterns.size(); ++i) {
    RE2::Options options;
    options.set_log_errors(false);
    auto re = std::make_shared<const RE2>(patterns[i], options);
    if (!re->ok()) {
      errors.error(s.file(), elementLine(config, "block_names", i, s.lineOf("block_names")),
                   "attachments.block_names: bad pattern \"" + patterns[i] + "\": " + re->error());
      continue;
    }
    out.push_back({patterns[i], std::move(re)});
  }
  return out;
}

bool typeBlocked(const std::string& type, const std::vector<std::string>& blocked) {
  for (const auto& b : blocked) {
    if (endsWith(b, "/*") ? type.rfind(b.substr(0, b.size() - 1), 0) == 0 : type == b) return true;
  }
  return false;
}

bool isZip(const mime::Part& part) {
  static const std::vector<std::string> kTypes = {"application/zip", "application/x-zip-compressed",
                                                  "application/x-zip", "multipart/x-zip"};
  for (const auto& t : kTypes)
    if (part.contentType == t) return true;
  return endsWith(asciiLower(trimTrailing(part.filename)), ".zip") || looksLikeZip(part.body);
}

// Every name the part gives its file: clients differ in which they show and save (one
// takes Content-Disposition filename=, another Content-Type name=), so a harmless name in
// one cannot hide the other. part.filename is the disposition's, or else the type's.
// The MIME parser keeps one value per parameter (the RFC 2231 form over a plain one, the
// last of two plain ones); the plain values it dropped are read here from the header.
void plainParams(std::string_view value, std::string_view key, std::vector<std::string>& out) {
  size_t i = value.find(';');
  while (i != std::string_view::npos && i < value.size() && out.size() < 32) {
    ++i;
    while (i < value.size() && (value[i] == ' ' || value[i] == '\t')) ++i;
    size_t eq = value.find('=', i);
    size_t semi = value.find(';', i);
    if (eq == std::string_view::npos || (semi != std::string_view::npos && semi < eq)) {
      i = semi;
      continue;
    }
    std::string_view k = value.substr(i, eq - i);
    while (!k.empty() && (k.back() == ' ' || k.back() == '\t')) k.remove_suffix(1);
    size_t v = eq + 1;
    while (v < value.size() && (value[v] == ' ' || value[v] == '\t')) ++v;
    std::string text;
    if (v < value.size() && value[v] == '"') {
      for (++v; v < value.size() && value[v] != '"'; ++v) {
        if (value[v] == '\\' && v + 1 < value.size()) ++v;
        text += value[v];
      }
      i = value.find(';', v);
    } else {
      size_t end = value.find(';', v);
      text = std::string(value.substr(v, end == std::string_view::npos ? std::string_view::npos : end - v));
      while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.pop_back();
      i = end;
    }
    if (mime::iequals(k, key) && !text.empty()) out.push_back(std::move(text));
  }
}

std::vector<std::string> namesOf(const mime::Part& part) {
  std::vector<std::string> found;
  if (!part.filename.empty()) found.push_back(part.filename);
  if (auto it = part.params.find("name"); it != part.params.end()) found.push_back(it->second);
  for (const auto& h : part.headers) {
    if (mime::iequals(h.name, "Content-Disposition")) plainParams(h.raw, "filename", found);
    if (mime::iequals(h.name, "Content-Type")) plainParams(h.raw, "name", found);
  }
  std::vector<std::string> names;
  for (auto& name : found) {
    // Mail clients put RFC 2047 words in quoted names, against RFC 2047 section 5.
    if (name.find("=?") != std::string::npos) name = mime::decodeHeaderWords(name);
    if (!name.empty() && std::find(names.begin(), names.end(), name) == names.end()) names.push_back(std::move(name));
  }
  return names;
}

// uuencoded files inside a body ("begin 644 name" then the encoded lines, RFC-less but
// still decoded by some clients): the names after "begin MODE ". Linear in the body.
std::vector<std::string> uuencodedNames(std::string_view body) {
  std::vector<std::string> names;
  size_t pos = 0;
  while (pos < body.size() && names.size() < 100) {
    size_t nl = body.find('\n', pos);
    std::string_view line = body.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? body.size() : nl + 1;
    if (line.rfind("begin ", 0) != 0) continue;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    size_t mode = 6, end = line.find(' ', mode);
    if (end == std::string_view::npos || end - mode < 3 || end - mode > 4) continue;
    if (line.substr(mode, end - mode).find_first_not_of("01234567") != std::string_view::npos) continue;
    std::string_view name = line.substr(end + 1);
    if (!name.empty()) names.emplace_back(name);
  }
  return names;
}

bool isAttachment(const mime::Part& part) {
  return part.disposition == "attachment" || !part.filename.empty() || (part.depth > 0 && !part.isText());
}

class Walker {
 public:
  // collectAll: keep walking after the first blocked file (strip removes each of them).
  Walker(const FilterConfig& config, bool collectAll) : config_(config), collectAll_(collectAll) {}

  CheckResult run(const mime::Part& root) {
    walk(root);
    return std::move(out_);
  }

 private:
  void walk(const mime::Part& part) {
    if (finished()) return;
    chain_.push_back(&part);
    walkPart(part);
    chain_.pop_back();
  }

  void walkPart(const mime::Part& part) {
    // A blocked part is removed whole: nothing below it needs a look.
    for (const auto& name : namesOf(part))
      if (block(name, "", blockReason(name, config_))) return;
    if (part.isMultipart() || part.isMessage()) {
      for (const auto& c : part.children) walk(c);
      return;
    }
    if (isAttachment(part)) ++out_.attachments;
    if (typeBlocked(part.contentType, config_.types) &&
        block(part.filename.empty() ? "(unnamed " + part.contentType + " part)" : part.filename, "",
              "type " + part.contentType))
      return;
    if (config_.scanZip && isAttachment(part) && isZip(part)) return walkZip(part);
    if (part.isText())
      for (const auto& name : uuencodedNames(part.body))
        if (block(name, "", blockReason(name, config_))) return;
  }

  void walkZip(const mime::Part& part) {
    std::string archive = pathStep("", part.filename.empty() ? "(unnamed archive)" : part.filename);
    attachment_ = archive;
    if (part.truncated) limit(archive, "malformed");  // the body was cut by the MIME limits
    walkArchive(part.body, archive, 1);
  }

  // Looks at the names in `data` (the archive at `path`, `depth` levels down) and opens the
  // members that are archives themselves. True once a blocked name is found: the attached
  // archive then goes as a whole, nothing more in it needs a look.
  bool walkArchive(std::string_view data, const std::string& path, unsigned depth) {
    size_t room = config_.maxZipEntries - std::min<size_t>(config_.maxZipEntries, out_.archiveEntries);
    if (room == 0) {
      limit(path, "max_zip_entries");
      return false;
    }
    ZipListing zip = listZipNames(data, room);
    out_.archiveEntries += static_cast<unsigned>(zip.names.size());
    if (zip.truncated) limit(path, "max_zip_entries");
    if (zip.malformed) limit(path, "malformed");
    for (const auto& name : zip.names) {
      if (finished() || block(name, path, blockReason(name, config_))) return true;
    }
    for (const auto& member : zip.members) {
      if (finished()) return true;
      if (!opensAsArchive(data, member, path)) continue;
      std::string inner = pathStep(path, member.name);
      if (depth >= config_.maxArchiveDepth) {
        limit(inner, "max_archive_depth");
        continue;
      }
      Unpacked u =
          unpackMember(data, member, config_.maxArchiveBytes - std::min(config_.maxArchiveBytes, out_.archiveBytes));
      out_.archiveBytes += u.cost;
      switch (u.status) {
        case Unpacked::Status::Ok:
          if (walkArchive(u.data(), inner, depth + 1)) return true;
          break;
        case Unpacked::Status::Budget: limit(inner, "max_archive_bytes"); break;
        case Unpacked::Status::Malformed: limit(inner, "malformed"); break;
        case Unpacked::Status::Encrypted: limit(inner, "encrypted"); break;
        case Unpacked::Status::Unsupported: limit(inner, "compression method " + std::to_string(member.method)); break;
      }
    }
    return false;
  }

  // A member is looked into when its name says zip (what a mail client or Explorer opens
  // as one), or when its bytes start like a zip whatever its name ("data.bin" holding
  // evil.exe is opened too): a stored member's are read in place, a deflated one's are
  // inflated only as far as its first bytes (at most kPeekInput of its stream, charged to
  // max_archive_bytes like any unpacking).
  bool opensAsArchive(std::string_view data, const ZipMember& m, const std::string& path) {
    if (endsWith(asciiLower(trimTrailing(m.name)), ".zip")) return true;
    if (m.encrypted || m.dataOffset >= data.size()) return false;
    if (m.method == 0) return looksLikeZip(data.substr(m.dataOffset, std::min<uint64_t>(m.compressedSize, 4)));
    if (m.method != 8) return false;
    constexpr uint64_t kPeekInput = 64 * 1024;
    uint64_t room = config_.maxArchiveBytes - std::min(config_.maxArchiveBytes, out_.archiveBytes);
    if (room == 0) {  // cannot tell without unpacking more than allowed
      limit(pathStep(path, m.name), "max_archive_bytes");
      return false;
    }
    uint64_t read = 0;
    std::string head = peekDeflated(data, m, 4, std::min(room, kPeekInput), &read);
    out_.archiveBytes += read;
    return looksLikeZip(head);
  }

  // "outer.zip/inner.zip": each step at most kMaxStep bytes, so a path stays short.
  static std::string pathStep(const std::string& path, std::string_view name) {
    constexpr size_t kMaxStep = 100;
    std::string step(name.substr(0, kMaxStep));
    if (name.size() > kMaxStep) step += "...";
    return path.empty() ? step : path + "/" + step;
  }

  // An archive not fully looked into: the first decides the verdict (limits_exceeded);
  // with strip, each takes its attachment.
  void limit(const std::string& archive, const std::string& what) {
    out_.archiveMalformed = out_.archiveMalformed || what == "malformed";
    Finding f{archive, "", what, true, attachment_};
    if (!out_.limit) out_.limit = f;
    if (config_.onLimit == FilterConfig::OnLimit::Strip)
      out_.all.push_back({std::move(f), target(), target() == chain_.front()});
  }

  bool finished() const { return out_.blocked && !collectAll_; }

  // The part to replace: the innermost one whose bytes are in the raw message (a part of
  // a base64-encoded attached message is not; the attached message is).
  const mime::Part* target() const {
    for (auto it = chain_.rbegin(); it != chain_.rend(); ++it)
      if ((*it)->hasOffsets()) return *it;
    return chain_.front();
  }

  // Records a finding for the part on top of chain_; false when `reason` is empty.
  bool block(const std::string& file, const std::string& archive, std::optional<std::string> reason) {
    if (finished() || !reason) return false;
    Finding f{file, archive, std::move(*reason), false, archive.empty() ? "" : attachment_};
    if (!out_.blocked) out_.blocked = f;
    out_.all.push_back({std::move(f), target(), target() == chain_.front()});
    return true;
  }

  const FilterConfig& config_;
  bool collectAll_;
  std::string attachment_;                // the attached archive being walked
  std::vector<const mime::Part*> chain_;  // root .. current part
  CheckResult out_;
};

// The text that takes a stripped file's place (printable ASCII only: names are untrusted).
std::string notice(const Finding& f) {
  if (f.limit) {
    const std::string& top = f.attachment.empty() ? f.file : f.attachment;
    return "Moat removed the attachment \"" + replySafe(top) + "\" (" +
           (top == f.file ? std::string("it") : "\"" + replySafe(f.file) + "\" in it") +
           " could not be fully checked: " + replySafe(f.reason) + ") from this message.";
  }
  if (f.archive.empty())
    return "Moat removed the attachment \"" + replySafe(f.file) + "\" (blocked " + replySafe(f.reason) +
           ") from this message.";
  std::string inner =
      f.archive.size() > f.attachment.size() + 1 ? f.archive.substr(f.attachment.size() + 1) + "/" + f.file : f.file;
  return "Moat removed the attachment \"" + replySafe(f.attachment) + "\" (it contains \"" + replySafe(inner) +
         "\", blocked " + replySafe(f.reason) + ") from this message.";
}

// The attached file a finding takes with it: the file, or the outermost archive.
std::string strippedName(const Finding& f) { return replySafe(f.attachment.empty() ? f.file : f.attachment); }

constexpr std::string_view kNoticeHeaders =
    "Content-Type: text/plain; charset=us-ascii\r\n"
    "Content-Disposition: inline\r\n"
    "Content-Transfer-Encoding: 7bit\r\n";

bool endsWithLineBreak(std::string_view raw, uint64_t end) { return end > 0 && end <= raw.size() && raw[end - 1] == '\n'; }

// A body part: its header block and body become the notice part; the delimiter lines on
// either side stay as they are, so the multipart stays valid (RFC 2046 5.1.1).
Edit replacePart(const mime::Part& part, const Finding& f, std::string_view raw) {
  Edit e;
  e.offset = part.offset;
  e.length = part.endOffset - part.offset;
  e.replacement = std::string(kNoticeHeaders) + "\r\n" + notice(f);
  if (endsWithLineBreak(raw, part.endOffset)) e.replacement += "\r\n";
  e.why = "stripped " + strippedName(f);
  return e;
}

// The message itself is the blocked file (a single-part message, or a blocked name on the
// top-level part): its content headers are removed and the body becomes the notice, so
// the message is still delivered, from the same sender with the same Subject.
std::vector<Edit> replaceRoot(const mime::Part& root, const Finding& f, std::string_view raw) {
  std::vector<Edit> edits;
  std::string why = "stripped " + strippedName(f);
  for (const auto& h : root.headers) {
    if (h.offset == mime::kNoOffset) continue;
    if (mime::iequals(h.name, "Content-Type") || mime::iequals(h.name, "Content-Transfer-Encoding") ||
        mime::iequals(h.name, "Content-Disposition") || mime::iequals(h.name, "Content-Description"))
      edits.push_back({h.offset, h.endOffset - h.offset, "", why});
  }
  Edit body;
  body.offset = root.headerEnd;
  body.length = root.endOffset - root.headerEnd;
  body.replacement = std::string(kNoticeHeaders) + "\r\n" + notice(f) + "\r\n";
  body.why = why;
  edits.push_back(std::move(body));
  return edits;
}

class AttachmentsFilter final : public Filter {
 public:
  explicit AttachmentsFilter(FilterConfig config) : config_(std::make_shared<const FilterConfig>(std::move(config))) {}
  std::string_view name() const override { return "attachments"; }
  Stage stage() const override { return Stage::Data; }
  mime::Depth mimeDepth() const override { return mime::Depth::Bodies; }  // zip directories

  // Zip directories can be large: the walk runs on the thread pool.
  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    auto parsed = ctx->mime;
    std::string_view raw = ctx->message;  // valid for the Data stage
    auto config = config_;
    auto result = std::make_shared<CheckResult>();
    env.offload(
        [parsed, raw, config, result] {
          // Without the MIME filter's tree (it is always first in the pipeline, but a
          // missing tree must not mean an unchecked message) parse here.
          auto msg = parsed ? parsed : mime::parse(raw, mime::Limits{});
          *result = check(*msg, *config);
          // The parts the result points at live in `msg`: make the edits while it does.
          if (config->action == Action::Strip || config->onLimit == FilterConfig::OnLimit::Strip)
            result->edits = stripEdits(*result, raw);
        },
        [ctx, config, result, done = std::move(done)] { done(resultFor(*result, *config)); }, raw.size());
  }

 private:
  std::shared_ptr<const FilterConfig> config_;
};

}  // namespace

FilterConfig readConfig(const policy::Config& config, policy::Errors& errors) {
  FilterConfig fc;
  auto s = config.section("attachments", errors);
  fc.extensions = readExtensions(s);
  fc.types = readTypes(s);
  fc.names = readNames(config, s, errors);
  bool anyList = s.has("block_extensions") || s.has("block_types") || s.has("block_names");
  fc.enabled = s.getBool("enabled", anyList);
  fc.scanZip = s.getBool("scan_zip", true);
  fc.maxZipEntries = static_cast<size_t>(s.getInt("max_zip_entries", 10000, 1, 1000000));
  fc.maxArchiveDepth = static_cast<unsigned>(s.getInt("max_archive_depth", 5, 1, 32));
  fc.maxArchiveBytes = s.getSize("max_archive_bytes", 64ull << 20);
  std::string action = s.getEnum("action", "reject", {"reject", "quarantine", "strip"});
  if (action == "quarantine") fc.action = Action::Quarantine;
  if (action == "strip") fc.action = Action::Strip;
  std::string onLimit = s.getEnum("limits_exceeded", action, {"reject", "quarantine", "strip", "tempfail", "pass"});
  if (onLimit == "quarantine") fc.onLimit = FilterConfig::OnLimit::Quarantine;
  if (onLimit == "strip") fc.onLimit = FilterConfig::OnLimit::Strip;
  if (onLimit == "tempfail") fc.onLimit = FilterConfig::OnLimit::TempFail;
  if (onLimit == "pass") fc.onLimit = FilterConfig::OnLimit::Pass;
  if (fc.enabled && !anyList) s.warning("enabled", "no block_extensions, block_types or block_names: nothing is blocked");
  s.rejectUnknownKeys();
  return fc;
}

std::optional<std::string> blockReason(std::string_view name, const FilterConfig& config) {
  // A NUL ends the name for some extractors and not for others: check both readings.
  std::string_view full = name;
  std::string_view cut = name.substr(0, name.find('\0'));
  for (std::string_view candidate : {full, cut}) {
    std::string lower = asciiLower(trimTrailing(candidate));
    for (const auto& ext : config.extensions)
      if (lower.size() > ext.size() && endsWith(lower, ext) && lower[lower.size() - ext.size() - 1] == '.')
        return "extension ." + ext;
    for (const auto& p : config.names)
      if (RE2::PartialMatch(re2::StringPiece(candidate.data(), candidate.size()), *p.re))
        return "name matches /" + p.pattern + "/";
  }
  return std::nullopt;
}

CheckResult check(const mime::Message& msg, const FilterConfig& config) {
  return Walker(config, config.action == Action::Strip).run(msg.root);
}

std::vector<Edit> stripEdits(const CheckResult& check, std::string_view raw) {
  std::vector<Edit> edits;
  for (const auto& b : check.all) {
    if (!b.part || !b.part->hasOffsets() || b.part->endOffset > raw.size()) continue;
    // Two findings in one part (an encoded attached message) strip it once: addEdit
    // refuses the second, identical range.
    if (b.isRoot) {
      std::vector<Edit> rootEdits = replaceRoot(*b.part, b.finding, raw);
      std::vector<Edit> trial = edits;
      bool ok = true;
      for (auto& e : rootEdits) ok = ok && addEdit(trial, std::move(e), raw.size());
      if (ok) edits = std::move(trial);
    } else {
      addEdit(edits, replacePart(*b.part, b.finding, raw), raw.size());
    }
  }
  return edits;
}

std::string replySafe(std::string_view name) {
  std::string out;
  for (unsigned char c : name) {
    if (out.size() >= 100) {
      out += "...";
      break;
    }
    out += (c >= 0x20 && c < 0x7F) ? static_cast<char>(c) : '?';
  }
  return out.empty() ? "(unnamed)" : out;
}

namespace {

std::string describe(const Finding& f) {
  return replySafe(f.file) + (f.archive.empty() ? "" : " in " + replySafe(f.archive));
}

Result blockedResult(const Finding& f, const FilterConfig& config) {
  std::string what = describe(f);
  if (config.action == Action::Quarantine)
    return Result::quarantine("attachment " + what + ": " + f.reason, "blocked " + what);
  return Result::reject(554, "5.7.1", "Attachment blocked: " + what + " (" + replySafe(f.reason) + ")",
                        "blocked " + what);
}

// An archive not fully looked into, as limits_exceeded says (strip and pass are handled by
// the caller). Like the antivirus filter's limits: never "clean".
Result limitResult(const Finding& f, const FilterConfig& config) {
  std::string what = "limit " + replySafe(f.reason);
  std::string text = "Attachment could not be fully checked: " + replySafe(f.file) + " (" + replySafe(f.reason) + ")";
  switch (config.onLimit) {
    case FilterConfig::OnLimit::Quarantine:
      return Result::quarantine(
          "attachment could not be fully checked: " + replySafe(f.file) + " (" + replySafe(f.reason) + ")", what);
    case FilterConfig::OnLimit::TempFail:
      return Result::tempFail(451, "4.7.1", "Attachment could not be fully checked, try again later", what);
    default: return Result::reject(554, "5.7.1", text, what);
  }
}

bool limitHolds(const CheckResult& check, const FilterConfig& config) {
  using L = FilterConfig::OnLimit;
  return check.limit &&
         (config.onLimit == L::Reject || config.onLimit == L::Quarantine || config.onLimit == L::TempFail);
}

}  // namespace

Result resultFor(const CheckResult& check, const FilterConfig& config) {
  Result r = Result::pass("clean");
  bool stripLimit = check.limit && config.onLimit == FilterConfig::OnLimit::Strip;
  if (check.blocked && config.action != Action::Strip) {
    r = blockedResult(*check.blocked, config);
  } else if (limitHolds(check, config)) {
    // The message is not delivered as it is: blocked parts to strip do not matter.
    r = limitResult(*check.limit, config);
  } else if ((check.blocked || stripLimit) && !check.edits.empty()) {
    r.summary.clear();
    std::vector<std::string> names;
    for (const auto& e : check.edits) {
      std::string name = e.why.substr(std::string_view("stripped ").size());
      if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
    }
    for (const auto& n : names) r.summary += (r.summary.empty() ? "stripped " : ", ") + n;
    r.edits = check.edits;
    r.detail.add("stripped", names);
  } else if (check.blocked) {
    // A strip that found no bytes to replace: refusing is the safe reading.
    Finding f = *check.blocked;
    r = Result::reject(554, "5.7.1", "Attachment blocked: " + describe(f) + " (" + replySafe(f.reason) + ")",
                       "blocked " + describe(f));
  } else if (stripLimit) {
    r = Result::reject(554, "5.7.1",
                       "Attachment could not be fully checked: " + replySafe(check.limit->file) + " (" +
                           replySafe(check.limit->reason) + ")",
                       "limit " + replySafe(check.limit->reason));
  } else if (check.limit) {
    r = Result::pass("limit " + replySafe(check.limit->reason));  // limits_exceeded = "pass"
  }
  if (check.blocked) {
    const Finding& f = *check.blocked;
    r.detail.add("file", f.file);
    if (!f.archive.empty()) r.detail.add("archive", f.archive);
    r.detail.add("reason", f.reason);
  }
  r.detail.add("attachments", check.attachments);
  if (check.archiveEntries) r.detail.add("archive_entries", check.archiveEntries);
  if (check.archiveBytes) r.detail.add("archive_bytes", check.archiveBytes);
  if (check.archiveMalformed) r.detail.add("archive_malformed", true);
  if (check.limit) {
    r.detail.add("limit", check.limit->reason);
    r.detail.add("unchecked", check.limit->file);
  }
  return r;
}

std::shared_ptr<const Filter> makeAttachmentsFilter(const policy::Config& config, policy::Errors& errors) {
  FilterConfig fc = readConfig(config, errors);
  if (!fc.enabled || (fc.extensions.empty() && fc.types.empty() && fc.names.empty())) return nullptr;
  return std::make_shared<AttachmentsFilter>(std::move(fc));
}

}  // namespace moat::filters::attachments
